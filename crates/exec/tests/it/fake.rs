//! Stand-ins for exec's neighbours: a bus on a token-authenticated socket that records every
//! publish and keeps knowledge, and a minimal HTTP/1.1 server on 127.0.0.1 with fixed routes that
//! counts its hits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aiventbus_proto::methods::{
    Fact, Health, HealthResult, KeyParams, KnowledgeGet, KnowledgeSet, KnowledgeSetParams, NoParams, Publish,
    PublishParams, PublishResult,
};
use aiventbus_proto::{ErrorCode, EventStatus};
use aiventbus_rpc::config::RpcConfig;
use aiventbus_rpc::token::{Key, Minter, Verifier};
use aiventbus_rpc::{Auth, Endpoint, Methods, RpcError, ServeOptions, TokenSource};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::DEADLINE;

/// One recorded publish.
#[derive(Debug, Clone)]
pub struct Published {
    /// As sent.
    pub params: PublishParams,
    /// The id answered.
    pub id: String,
}

impl Published {
    /// The payload object.
    pub fn payload(&self) -> &Value {
        self.params.payload.as_ref().expect("payload")
    }
}

#[derive(Default)]
struct Data {
    events: Vec<Published>,
    knowledge: HashMap<String, Fact>,
}

/// The fake bus.
#[derive(Clone)]
pub struct FakeBus {
    data: Arc<Mutex<Data>>,
    changed: Arc<watch::Sender<u64>>,
    path: PathBuf,
    key: Key,
}

impl FakeBus {
    /// Serves at `path`, accepting tokens minted with a fresh bus key.
    pub async fn start(path: PathBuf) -> FakeBus {
        let key = Key::generate().expect("key");
        let bus = FakeBus {
            data: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
            path,
            key,
        };
        let mut methods = Methods::new(Arc::new(bus.clone()));
        methods.add::<Publish, _, _>(|bus: Arc<FakeBus>, peer, params: PublishParams| async move {
            assert_eq!(peer.subject, "exec");
            let id = params.id.clone().unwrap_or_else(|| aiventbus_rpc::ids::prefixed("evt"));
            let seq = {
                let mut data = bus.data.lock().expect("bus data");
                if !data.events.iter().any(|event| event.id == id) {
                    data.events.push(Published {
                        params: params.clone(),
                        id: id.clone(),
                    });
                }
                data.events.len() as u64
            };
            bus.changed.send_modify(|version| *version += 1);
            Ok(PublishResult {
                id,
                seq,
                trace_id: params.trace_id.unwrap_or_else(|| "tr_fake".into()),
                status: EventStatus::Published,
            })
        });
        methods.add::<KnowledgeSet, _, _>(|bus: Arc<FakeBus>, _, params: KnowledgeSetParams| async move {
            let fact = Fact {
                key: params.key.clone(),
                value: params.value,
                source: params.source.unwrap_or_default(),
                created_at: aiventbus_rpc::time::now_rfc3339(),
                updated_at: aiventbus_rpc::time::now_rfc3339(),
            };
            bus.data
                .lock()
                .expect("bus data")
                .knowledge
                .insert(params.key, fact.clone());
            Ok(fact)
        });
        methods.add::<KnowledgeGet, _, _>(|bus: Arc<FakeBus>, _, params: KeyParams| async move {
            bus.data
                .lock()
                .expect("bus data")
                .knowledge
                .get(&params.key)
                .cloned()
                .ok_or_else(|| RpcError::new(ErrorCode::NotFound, format!("no fact {}", params.key)))
        });
        methods.add::<Health, _, _>(|_, _, _: NoParams| async move {
            Ok(HealthResult {
                service: "bus".into(),
                status: "ok".into(),
                details: Default::default(),
            })
        });
        let listener = aiventbus_rpc::bind(&bus.path).await.expect("bind the fake bus");
        let options = ServeOptions::new(
            "bus",
            Auth::Token(Verifier::new("bus", &bus.key)),
            &RpcConfig::default(),
        );
        tokio::spawn(aiventbus_rpc::serve(
            listener,
            Arc::new(methods),
            options,
            CancellationToken::new(),
        ));
        bus
    }

    /// exec's endpoint to this bus.
    pub fn endpoint(&self) -> Endpoint {
        let token = Minter::new("bus", &self.key).mint(
            "exec",
            &["events.publish", "knowledge.get", "knowledge.set", "system.health"],
            aiventbus_rpc::time::now_ms() + 3_600_000,
        );
        Endpoint {
            path: self.path.clone(),
            token: TokenSource::Static(token),
        }
    }

    /// Every publish so far.
    pub fn events(&self) -> Vec<Published> {
        self.data.lock().expect("bus data").events.clone()
    }

    /// The events correlated with an action (or run), in publish order.
    pub fn thread(&self, correlation_id: &str) -> Vec<Published> {
        self.events()
            .into_iter()
            .filter(|event| event.params.correlation_id.as_deref() == Some(correlation_id))
            .collect()
    }

    /// A stored fact.
    pub fn fact(&self, key: &str) -> Option<Fact> {
        self.data.lock().expect("bus data").knowledge.get(key).cloned()
    }

    /// Waits until `check` holds over the recorded events.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&[Published]) -> bool) {
        let mut changes = self.changed.subscribe();
        let reached = tokio::time::timeout(DEADLINE, async {
            loop {
                if check(&self.events()) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(reached.is_ok(), "timed out waiting for {what}: {:#?}", self.events());
    }

    /// Waits for `exec.finished` of a run and returns its payload.
    pub async fn finished(&self, run_id: &str) -> Value {
        let matches = |event: &Published| {
            event.params.topic == "exec.finished" && event.payload()["run_id"].as_str() == Some(run_id)
        };
        self.wait_for(&format!("exec.finished of {run_id}"), |events| {
            events.iter().any(matches)
        })
        .await;
        self.events()
            .into_iter()
            .find(matches)
            .expect("found above")
            .payload()
            .clone()
    }
}

/// A route of the HTTP server.
#[derive(Clone)]
pub struct Route {
    /// Status code.
    pub status: u16,
    /// Extra header lines (`Location: …`).
    pub headers: Vec<String>,
    /// Body.
    pub body: String,
}

impl Route {
    /// 200 with a body.
    pub fn ok(body: &str) -> Route {
        Route {
            status: 200,
            headers: vec!["Content-Type: text/plain".into()],
            body: body.into(),
        }
    }

    /// 302 to a location.
    pub fn redirect(location: &str) -> Route {
        Route {
            status: 302,
            headers: vec![format!("Location: {location}")],
            body: String::new(),
        }
    }
}

/// An HTTP/1.1 server on 127.0.0.1 answering fixed routes, one request per connection.
pub struct HttpServer {
    /// Its port.
    pub port: u16,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    hits: Arc<Mutex<HashMap<String, u64>>>,
    stop: CancellationToken,
}

impl HttpServer {
    /// Listens on an ephemeral port of 127.0.0.1.
    pub async fn start() -> HttpServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let port = listener.local_addr().expect("http address").port();
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let stop = CancellationToken::new();
        let (task_routes, task_hits, task_stop) = (Arc::clone(&routes), Arc::clone(&hits), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    _ = task_stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => return,
                    },
                };
                let (routes, hits) = (Arc::clone(&task_routes), Arc::clone(&task_hits));
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    *hits.lock().expect("hits").entry(path.clone()).or_default() += 1;
                    let route = routes.lock().expect("routes").get(&path).cloned().unwrap_or(Route {
                        status: 404,
                        headers: Vec::new(),
                        body: "not found".into(),
                    });
                    let mut response = format!(
                        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                        route.status,
                        route.body.len()
                    );
                    for header in &route.headers {
                        response.push_str(header);
                        response.push_str("\r\n");
                    }
                    response.push_str("\r\n");
                    response.push_str(&route.body);
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        HttpServer {
            port,
            routes,
            hits,
            stop,
        }
    }

    /// Adds a route.
    pub fn route(&self, path: &str, route: Route) {
        self.routes.lock().expect("routes").insert(path.into(), route);
    }

    /// Requests seen for a path.
    pub fn hits(&self, path: &str) -> u64 {
        self.hits.lock().expect("hits").get(path).copied().unwrap_or(0)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The tiny MCP server script.
pub fn mcp_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/mcp_server.py")
}
