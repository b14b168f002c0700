//! The ceiling to compare against: a bare axum server with a GET that returns a short
//! text and a POST that parses and echoes a small JSON body. It runs in its own process
//! (this bench binary re-executed with `LOADGEN_BASELINE=1`) so it competes for the CPU
//! exactly as the master server does.

use axum::routing::{get, post};
use axum::{Json, Router};

/// Serves the baseline on an ephemeral loopback port; prints the address first.
pub fn serve() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let app = Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route(
                "/json",
                post(|Json(v): Json<serde_json::Value>| async move { Json(v) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!(
            "{}",
            serde_json::json!({"event": "listening", "addr": listener.local_addr()?.to_string()})
        );
        axum::serve(listener, app).await?;
        Ok(())
    })
}
