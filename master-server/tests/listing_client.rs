//! `mesh::listing` against a real master server on 127.0.0.1 (SQLite): the client's calls
//! and errors, and the keeper task keeping a row alive through a master server restart.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Backend, TestDb};
use master_server::App;
use mesh::listing::{
    Attributes, ConnectInfo, CreateSession, Desired, Filter, Keeper, KeeperConfig, KeeperTask,
    ListingClient, ListingError, PatchSession,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A master server serving on a real socket.
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn serve(db: &TestDb, addr: SocketAddr) -> Running {
    let app = App::start(db.config()).await.expect("start app");
    let listener = TcpListener::bind(addr).await.expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.serve(listener, async move {
        let _ = stopped.await;
    }));
    Running { addr, stop, task }
}

async fn shut(server: Running) {
    let _ = server.stop.send(());
    tokio::time::timeout(Duration::from_secs(20), server.task)
        .await
        .expect("server stops in time")
        .expect("server task")
        .expect("server io");
}

fn connect() -> ConnectInfo {
    ConnectInfo {
        peer: "peer-abc".into(),
        punch: "punchid@127.0.0.1:3478".into(),
    }
}

fn create_body(name: &str, mode: &str, players: u32) -> CreateSession {
    CreateSession {
        game: "lan party".into(),
        name: name.into(),
        max_players: 4,
        players,
        timeout_secs: Some(30),
        attributes: Attributes::from([("mode".into(), mode.into())]),
        connect: connect().to_raw().ok(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_calls_every_route() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = serve(&db, "127.0.0.1:0".parse().expect("addr")).await;
    let client = ListingClient::new(&format!("http://{}", server.addr), Duration::from_secs(5))
        .expect("client");

    // An attribute value that needs URL encoding.
    let mode = "c&f=1 é";
    let open = client
        .create(&create_body("open", mode, 1))
        .await
        .expect("create");
    client
        .create(&create_body("full", mode, 4))
        .await
        .expect("create full");
    client
        .create(&create_body("other", "dm", 1))
        .await
        .expect("create other");

    let filter = Filter {
        attributes: Attributes::from([("mode".into(), mode.into())]),
        has_space: true,
        ..Filter::default()
    };
    let list = client.list("lan party", &filter).await.expect("list");
    let names: Vec<&str> = list.sessions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["open"], "attribute filter and has_space");
    assert_eq!(list.next_cursor, None);
    let all = client
        .list("lan party", &Filter::default())
        .await
        .expect("list all");
    assert_eq!(all.sessions.len(), 3);
    let page = Filter {
        limit: Some(2),
        ..Filter::default()
    };
    let first = client.list("lan party", &page).await.expect("page 1");
    assert_eq!(first.sessions.len(), 2);
    let rest = Filter {
        cursor: first.next_cursor.clone(),
        ..page
    };
    let second = client.list("lan party", &rest).await.expect("page 2");
    assert_eq!(second.sessions.len(), 1);

    let id = open.id.into();
    let row = client.get(id).await.expect("get");
    assert_eq!((row.name.as_str(), row.players), ("open", 1));
    assert_eq!(row.connect_info(), Some(connect()));
    assert_eq!(row.attributes["mode"], mode);

    let patch = PatchSession {
        players: Some(2),
        name: Some("renamed".into()),
        ..PatchSession::default()
    };
    let patched = client.patch(id, &open.token, &patch).await.expect("patch");
    assert_eq!((patched.name.as_str(), patched.players), ("renamed", 2));
    let ack = client.heartbeat(id, &open.token).await.expect("heartbeat");
    assert!(ack.expires_at.starts_with("20"), "{}", ack.expires_at);

    let wrong = client
        .heartbeat(id, "not-the-token")
        .await
        .expect_err("wrong token");
    assert_eq!((wrong.kind(), wrong.status()), ("unauthorized", Some(401)));
    assert!(!wrong.is_retryable());
    let wrong = client
        .delete(id, "not-the-token")
        .await
        .expect_err("wrong token");
    assert_eq!(wrong.kind(), "unauthorized");

    client.delete(id, &open.token).await.expect("delete");
    match client.get(id).await {
        Err(ListingError::Api { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (404, "not_found"));
        }
        other => panic!("expected 404 not_found, got {other:?}"),
    }
    let bad = client
        .list(
            "lan party",
            &Filter {
                limit: Some(0),
                ..Filter::default()
            },
        )
        .await
        .expect_err("limit 0");
    assert_eq!((bad.status(), bad.kind()), (Some(400), "bad_request"));

    shut(server).await;
    let down = client.get(id).await.expect_err("server down");
    assert!(down.is_retryable(), "{down:?}");
    db.cleanup().await;
}

/// Waits up to `within` for `check` to return `Some`.
async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(v) = check().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_task_keeps_a_row_alive_through_a_restart() {
    let db = TestDb::new(Backend::Sqlite).await;
    assert_eq!(
        db.config().min_timeout_secs,
        1,
        "tests allow short timeouts"
    );
    let server = serve(&db, "127.0.0.1:0".parse().expect("addr")).await;
    let addr = server.addr;
    let client =
        ListingClient::new(&format!("http://{addr}"), Duration::from_secs(1)).expect("client");
    let timeout = Duration::from_secs(2);
    let desired = Desired {
        game: "kept".into(),
        name: "host".into(),
        max_players: 8,
        players: 1,
        attributes: Attributes::new(),
        connect: Some(connect()),
    };
    let keeper = Keeper::create(Instant::now(), desired, timeout, KeeperConfig::default());
    let handle = KeeperTask::spawn(client.clone(), keeper);
    let status = handle.status();
    let id = eventually(Duration::from_secs(3), || async { status.borrow().id })
        .await
        .expect("listed");

    // Alive for three timeouts; a player count change shows up within a second.
    let start = Instant::now();
    let mut changed_at = None;
    while start.elapsed() < timeout * 3 {
        let row = client.get(id).await.expect("row stays live");
        assert_eq!(row.connect_info(), Some(connect()));
        if changed_at.is_none() && start.elapsed() > Duration::from_secs(1) {
            handle.set_players(3);
            changed_at = Some(Instant::now());
        }
        if let Some(at) = changed_at {
            if at.elapsed() > Duration::from_secs(1) {
                assert_eq!(row.players, 3, "set_players visible within a second");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        status.borrow().id,
        Some(id),
        "never re-created while the server was up"
    );
    assert_eq!(status.borrow().consecutive_failures, 0);

    // The master server goes away for longer than a heartbeat interval.
    shut(server).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        status.borrow().consecutive_failures > 0,
        "the keeper noticed"
    );
    let server = serve(&db, addr).await;
    let live = eventually(Duration::from_secs(5), || {
        let client = client.clone();
        let status = status.clone();
        async move {
            let s = status.borrow().clone();
            let id = s.id?;
            (s.consecutive_failures == 0).then_some(())?;
            client.get(id).await.ok()
        }
    })
    .await
    .expect("the row is live again after the restart");
    assert_eq!(
        live.players, 3,
        "the row (kept or re-created) has the desired state"
    );
    // Still kept alive past another timeout.
    tokio::time::sleep(timeout + Duration::from_millis(500)).await;
    let id = status.borrow().id.expect("id");
    client.get(id).await.expect("still live");

    handle
        .delist(Duration::from_secs(5))
        .await
        .expect("delisted");
    let gone = client.get(id).await.expect_err("delisted");
    assert_eq!(gone.status(), Some(404));
    shut(server).await;
    db.cleanup().await;
}
