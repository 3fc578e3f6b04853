//! The web dashboard: one page and its scripts, embedded in the binary (no install step, no
//! CDN), and the session cookie that lets a browser use the token-guarded API.
//!
//! The page (`ui/index.html`, `ui/app.js`) is plain JavaScript drawing on two vendored
//! libraries, dagre (graph layout) and uPlot (charts), whose licences sit beside them in
//! `ui/vendor/`; docs/design/ui.md says why. It calls the same `/v1` API as the CLI.
//!
//! A browser cannot send `Authorization` headers on its own, so the token is handed over once,
//! typed into the page (`POST /v1/session`) or in the address (`/?token=...`, answered with a
//! redirect that drops it from the address bar and history), and kept in an `HttpOnly`,
//! `SameSite=Strict` cookie: scripts cannot read it, and no other site's page can make the
//! browser send it. With the server's other guards (JSON-only POSTs, loopback Host names, no
//! CORS) a cross-site page can neither read nor change anything.

use super::{ApiError, AppState};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

/// The cookie holding the token.
pub(crate) const COOKIE: &str = "oxflow_token";

/// What every page and asset is answered with: only this server's own scripts and styles
/// run, nothing frames the page, and no address (with a token in it) leaks as a referrer.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The embedded files: path under `/ui/`, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("ui/app.css"),
    ),
    (
        "vendor/dagre.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("ui/vendor/dagre.min.js"),
    ),
    (
        "vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("ui/vendor/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("ui/vendor/uPlot.min.css"),
    ),
];

const INDEX: &[u8] = include_bytes!("ui/index.html");

fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `/?token=...` on the page's address.
#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    token: Option<String>,
}

/// `GET /`: the page. With `?token=`, a right token is moved into the cookie and the browser
/// sent back to `/` without it; a wrong one is refused.
pub(crate) async fn page(
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> Response {
    if let Some(given) = query.token {
        if !state.token_matches(&given) {
            return secured(
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "wrong token in ?token=; open the page without it and enter the token there",
                )
                .into_response(),
            );
        }
        let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
        if let Some(cookie) = session_cookie(&state) {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        return secured(response);
    }
    secured(
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            INDEX,
        )
            .into_response(),
    )
}

/// `GET /ui/{*file}`: an embedded script or style sheet.
pub(crate) async fn asset(UrlPath(file): UrlPath<String>) -> Response {
    match ASSETS.iter().find(|(path, _, _)| *path == file) {
        Some((_, content_type, bytes)) => secured(
            (
                [
                    (header::CONTENT_TYPE, *content_type),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                *bytes,
            )
                .into_response(),
        ),
        None => ApiError::new(StatusCode::NOT_FOUND, format!("no asset `{file}`")).into_response(),
    }
}

/// The cookie that carries the server's token (none when the server has no token).
fn session_cookie(state: &AppState) -> Option<HeaderValue> {
    let token = state.token.as_deref()?;
    // A token is hex or what the operator put in --token-file: a value a cookie can hold
    // unquoted, or refused here rather than sent mangled.
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
    ))
    .ok()
}

/// The body of `POST /v1/session`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

/// `POST /v1/session {"token": "..."}`: checks the token and sets the cookie.
pub(crate) async fn login(State(state): State<AppState>, request: Request) -> Response {
    let login: Login = match super::json_body(&state, request).await {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    if !state.token_matches(&login.token) {
        return ApiError::new(StatusCode::UNAUTHORIZED, "wrong token").into_response();
    }
    let mut response = (StatusCode::OK, axum::Json(json!({ "session": "open" }))).into_response();
    match session_cookie(&state) {
        Some(cookie) => {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        None if state.token.is_some() => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "this server's token has characters a cookie cannot hold; use the API with Authorization: Bearer",
            )
            .into_response()
        }
        None => {}
    }
    response
}

/// `DELETE /v1/session`: clears the cookie.
pub(crate) async fn logout() -> Response {
    let mut response = axum::Json(json!({ "session": "closed" })).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("oxflow_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

/// The token a request carries: `Authorization: Bearer`, else the session cookie.
pub(crate) fn given_token(headers: &HeaderMap) -> &str {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return bearer;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map_or("", |(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_bearer_header_else_the_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(given_token(&headers), "");
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; oxflow_token=abc123; other=1"),
        );
        assert_eq!(given_token(&headers), "abc123");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer fromheader"),
        );
        assert_eq!(given_token(&headers), "fromheader");
        let mut lookalike = HeaderMap::new();
        lookalike.insert(
            header::COOKIE,
            HeaderValue::from_static("xoxflow_token=abc; oxflow_tokenx=def"),
        );
        assert_eq!(given_token(&lookalike), "");
    }

    #[test]
    fn every_asset_the_page_links_is_embedded() {
        let page = std::str::from_utf8(INDEX).unwrap();
        for link in page
            .split(['"', '\''])
            .filter_map(|part| part.strip_prefix("/ui/"))
        {
            assert!(
                ASSETS.iter().any(|(path, _, _)| *path == link),
                "the page links /ui/{link}, which is not embedded"
            );
        }
        assert!(ASSETS.iter().all(|(_, _, bytes)| !bytes.is_empty()));
    }
}
