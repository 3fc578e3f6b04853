//! The tokio runtime of the connectors whose client libraries are asynchronous (NATS, object
//! storage). The runtime's readers and writers are threads; they call in with [`run`].

use std::future::Future;

/// The runtime every asynchronous client of this process runs on: two worker threads,
/// started on first use and never dropped (dropping a runtime inside another one panics, and
/// a sink may be dropped anywhere).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("oxflow-io")
            .enable_all()
            .build()
            .expect("a tokio runtime for connector clients")
    })
}

/// Runs `future` on the connectors' runtime and waits for it from this (non-async) thread.
/// Works from any thread, inside an async context or not: the caller only blocks on a channel.
pub(crate) fn run<F>(future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv()
        .expect("connector tasks run to completion: the runtime is never shut down")
}

/// Spawns `future` on the connectors' runtime.
pub(crate) fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime().spawn(future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_works_inside_and_outside_an_async_context() {
        assert_eq!(run(async { 1 + 1 }), 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async { assert_eq!(run(async { 3 }), 3) });
    }
}
