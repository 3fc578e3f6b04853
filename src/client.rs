//! A client of the runtime server's REST API: what `oxflow submit`, `list`, `status`,
//! `savepoint`, `stop` and `cancel` use, and what a Rust program can use the same way.

use crate::error::{OxflowError, Result};
use crate::spec::JobSpec;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::path::Path;

/// Talks to one server.
pub struct Client {
    base: String,
    token: Option<String>,
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8081`), sending `token` as a
    /// bearer token if given.
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        if !base.starts_with("http://") {
            return Err(OxflowError::Server(format!(
                "server URL `{base}` must start with http:// (the server speaks plain HTTP on loopback)"
            )));
        }
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Sends a request; returns the status and the body as text.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let bytes = match body {
            Some(b) => {
                request = request.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(b).map_err(|e| OxflowError::Server(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(bytes))
            .map_err(|e| OxflowError::Server(format!("{url}: {e}")))?;
        let response = self.http.request(request).await.map_err(|e| {
            OxflowError::Server(format!("{url}: {e} (is `oxflow server` running there?)"))
        })?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| OxflowError::Server(format!("{url}: reading the answer: {e}")))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Sends a request and decodes the JSON answer; an error status becomes an error with
    /// the server's message.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let (status, text) = self.send(method, path, body).await?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        Err(OxflowError::Server(format!("{status}: {message}")))
    }

    /// Submits a job; returns its id.
    pub async fn submit(&self, spec: &JobSpec, restore_from: Option<&Path>) -> Result<String> {
        let body = json!({ "spec": spec, "restore_from": restore_from });
        let answer = self.call(Method::POST, "/v1/jobs", Some(&body)).await?;
        answer
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| OxflowError::Server(format!("no job id in the answer {answer}")))
    }

    /// Every job, with its state.
    pub async fn list(&self) -> Result<Value> {
        self.call(Method::GET, "/v1/jobs", None).await
    }

    /// One job's state, operators, watermarks and checkpoints.
    pub async fn status(&self, id: &str) -> Result<Value> {
        self.call(Method::GET, &format!("/v1/jobs/{id}"), None)
            .await
    }

    /// Takes a savepoint; returns its path.
    pub async fn savepoint(&self, id: &str) -> Result<String> {
        let answer = self
            .call(Method::POST, &format!("/v1/jobs/{id}/savepoints"), None)
            .await?;
        path_of(&answer, "path")
    }

    /// Stops a job with a savepoint; returns the savepoint's path.
    pub async fn stop(&self, id: &str) -> Result<String> {
        let answer = self
            .call(Method::POST, &format!("/v1/jobs/{id}/stop"), None)
            .await?;
        path_of(&answer, "savepoint")
    }

    /// Cancels a job.
    pub async fn cancel(&self, id: &str) -> Result<Value> {
        self.call(Method::DELETE, &format!("/v1/jobs/{id}"), None)
            .await
    }
}

fn path_of(answer: &Value, field: &str) -> Result<String> {
    answer
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| OxflowError::Server(format!("no `{field}` in the answer {answer}")))
}
