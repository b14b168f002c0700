//! Shared test support: a database per test (SQLite file or a fresh PostgreSQL database)
//! and a JSON client that drives the router in-process.
#![allow(dead_code)]

pub mod openapi;
pub mod server;
pub mod slow;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use master_server::{App, Config};
use serde_json::Value;
use sqlx::Connection;
use tower::ServiceExt;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that lives as long as the test.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_admin: Option<(String, String)>,
}

/// The PostgreSQL server the tests use; `.ci/run` starts one and sets it.
pub fn pg_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "PostgreSQL tests need TEST_DATABASE_URL=postgres://USER@HOST:PORT/postgres \
             (a role allowed to CREATE DATABASE); .ci/run installs and starts PostgreSQL \
             and sets it"
        )
    })
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite:{}", dir.path().join("master.db").display());
                TestDb {
                    url,
                    _dir: Some(dir),
                    pg_admin: None,
                }
            }
            Backend::Postgres => {
                let admin = pg_admin_url();
                let name = format!("master_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect admin");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create database");
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                let url = format!("{base}/{name}");
                TestDb {
                    url,
                    _dir: None,
                    pg_admin: Some((admin, name)),
                }
            }
        }
    }

    /// Drops the PostgreSQL database (SQLite files go with the temp dir).
    pub async fn cleanup(self) {
        if let Some((admin, name)) = &self.pg_admin {
            if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        }
    }

    pub fn config(&self) -> Config {
        Config {
            database_url: self.url.clone(),
            rate_limit_per_sec: 0,
            min_timeout_secs: 1,
            ..Config::default()
        }
    }
}

/// An app driven in-process through `tower::ServiceExt::oneshot`; every answer is checked
/// against the server's own OpenAPI document ([`openapi::Spec`]).
pub struct Client {
    pub router: Router,
    pub peer: SocketAddr,
    spec: Arc<OnceLock<openapi::Spec>>,
}

/// A response: status, headers and the JSON body (`Value::Null` when empty).
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }
}

impl Client {
    pub fn new(app: &App) -> Client {
        Client {
            router: app.router(),
            peer: "192.0.2.10:40000".parse().expect("addr"),
            spec: Arc::default(),
        }
    }

    /// A client of the same app from another address.
    pub fn with_peer(&self, peer: &str) -> Client {
        Client {
            router: self.router.clone(),
            peer: peer.parse().expect("addr"),
            spec: self.spec.clone(),
        }
    }

    async fn spec(&self) -> &openapi::Spec {
        if self.spec.get().is_none() {
            // From another address, so the fetch does not draw from this client's rate limit.
            let other = Client {
                peer: "198.51.100.250:1".parse().expect("addr"),
                spec: Arc::default(),
                router: self.router.clone(),
            };
            let req = Request::get("/v1/openapi.json")
                .body(Body::empty())
                .expect("request");
            let reply = other.send(req).await;
            assert_eq!(reply.status, StatusCode::OK, "openapi document");
            let _ = self.spec.set(openapi::Spec::new(reply.body));
        }
        self.spec.get().expect("spec set")
    }

    /// Sends a request and checks the answer against the OpenAPI document.
    pub async fn raw(&self, req: Request<Body>) -> Reply {
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let reply = self.send(req).await;
        self.spec()
            .await
            .check(&method, &path, reply.status, &reply.headers, &reply.body);
        reply
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let mut req = req;
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let response = self.router.clone().oneshot(req).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let req = match body {
            Some(body) => builder
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => builder.body(Body::empty()),
        };
        self.raw(req.expect("request")).await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, None, None).await
    }

    /// Creates a session and returns (id, token).
    pub async fn create(&self, body: Value) -> (String, String) {
        let reply = self
            .call(Method::POST, "/v1/sessions", None, Some(body))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "create failed: {}",
            reply.body
        );
        let id = reply.body["id"].as_str().expect("id").to_owned();
        let token = reply.body["token"].as_str().expect("token").to_owned();
        (id, token)
    }
}

/// A minimal valid create body.
pub fn session(game: &str, name: &str) -> Value {
    serde_json::json!({"game": game, "name": name, "max_players": 8, "players": 1,
                       "attributes": {"mode": "ctf"}, "connect": {"peer": "abc"}})
}

/// Parses an RFC 3339 timestamp from a JSON field.
pub fn instant(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().expect("timestamp string"))
        .expect("RFC 3339")
        .to_utc()
}

/// Generates one test per backend from `async fn NAME(backend: Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::common::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::common::Backend::Postgres).await })*
        }
    };
}
