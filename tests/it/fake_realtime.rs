//! A fake Asterisk node with realtime PJSIP: ARI `PUT /ari/asterisk/modules/{module}`
//! (res_pjsip reload, refused with 500 on demand) and `GET /ari/endpoints[/PJSIP/{id}]`
//! answered from `ps_endpoints` in the shared PostgreSQL, as an Asterisk whose sorcery reads
//! the realtime tables would (only the shape of the ARI Endpoint the provisioner reads:
//! technology, resource, state, channel_ids).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use pbxbridge::db::Db;
use sqlx::Row;

/// What the node saw and how it behaves.
#[derive(Default)]
pub struct NodeState {
    /// Requests, `METHOD /path`.
    pub log: Vec<String>,
    /// res_pjsip reloads accepted.
    pub reloads: usize,
    /// Refuse reloads (HTTP 500).
    pub fail_reload: bool,
}

/// One fake node.
pub struct FakeNode {
    /// Where its ARI listens.
    pub addr: SocketAddr,
    /// Shared state.
    pub state: Arc<Mutex<NodeState>>,
}

#[derive(Clone)]
struct S {
    state: Arc<Mutex<NodeState>>,
    db: Db,
}

impl FakeNode {
    /// Starts a node reading `ps_endpoints` from `db_url`.
    pub async fn start(db_url: &str) -> FakeNode {
        use axum::extract::{Path, State};
        use axum::http::StatusCode;
        use axum::routing::{get, put};
        use axum::{Json, Router};
        use serde_json::{Value, json};

        async fn reload(State(s): State<S>, Path(module): Path<String>) -> StatusCode {
            let mut st = s.state.lock().unwrap();
            st.log.push(format!("PUT /ari/asterisk/modules/{module}"));
            if st.fail_reload {
                return StatusCode::INTERNAL_SERVER_ERROR;
            }
            if module == "res_pjsip.so" {
                st.reloads += 1;
                StatusCode::NO_CONTENT
            } else {
                StatusCode::NOT_FOUND
            }
        }
        async fn endpoint(
            State(s): State<S>,
            Path((tech, res)): Path<(String, String)>,
        ) -> (StatusCode, Json<Value>) {
            s.state
                .lock()
                .unwrap()
                .log
                .push(format!("GET /ari/endpoints/{tech}/{res}"));
            let found = sqlx::query("SELECT id FROM ps_endpoints WHERE id = $1")
                .bind(&res)
                .fetch_optional(s.db.pool())
                .await
                .unwrap()
                .is_some();
            if tech == "PJSIP" && found {
                (
                    StatusCode::OK,
                    Json(
                        json!({"technology": "PJSIP", "resource": res, "state": "offline", "channel_ids": []}),
                    ),
                )
            } else {
                (
                    StatusCode::NOT_FOUND,
                    Json(json!({"message": "Endpoint not found"})),
                )
            }
        }
        async fn endpoints(State(s): State<S>) -> Json<Value> {
            s.state
                .lock()
                .unwrap()
                .log
                .push("GET /ari/endpoints".into());
            let rows = sqlx::query("SELECT id::text AS id FROM ps_endpoints")
                .fetch_all(s.db.pool())
                .await
                .unwrap();
            Json(Value::Array(
                rows.iter()
                    .map(|r| {
                        let id: String = r.get("id");
                        json!({"technology": "PJSIP", "resource": id, "state": "offline", "channel_ids": []})
                    })
                    .collect(),
            ))
        }

        let state = Arc::new(Mutex::new(NodeState::default()));
        let s = S {
            state: state.clone(),
            db: Db::connect(db_url).await.unwrap(),
        };
        let app = Router::new()
            .route("/ari/asterisk/modules/{module}", put(reload))
            .route("/ari/endpoints", get(endpoints))
            .route("/ari/endpoints/{tech}/{res}", get(endpoint))
            .with_state(s);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeNode { addr, state }
    }

    /// Its ARI URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// res_pjsip reloads accepted so far.
    pub fn reloads(&self) -> usize {
        self.state.lock().unwrap().reloads
    }

    /// Whether it was asked for endpoint `id`.
    pub fn asked_for(&self, id: &str) -> bool {
        let want = format!("GET /ari/endpoints/PJSIP/{id}");
        self.state.lock().unwrap().log.contains(&want)
    }

    /// Makes it refuse (or accept again) reloads.
    pub fn fail_reload(&self, fail: bool) {
        self.state.lock().unwrap().fail_reload = fail;
    }
}
