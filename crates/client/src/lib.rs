//! The typed SDK for the aiventbus public API: publish, read and follow events, decide on actions,
//! run commands, answer human-input requests and manage users and keys. It speaks to the daemon's
//! local socket (`api.sock`) or, with [`Client::connect_remote`], to a gateway over ATP (WebSocket);
//! the calls are the same either way. This is the one crate a third-party Rust program needs.
#![deny(missing_docs)]

mod admin;
pub mod atp;
mod exec;
mod policy;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use aiventbus_proto as proto;
use aiventbus_proto::agents::{QueryAsk, QueryParams, QueryResult};
use aiventbus_proto::methods::{
    Chain, EventsResult, Get, IdParams, List, ListParams, NoParams, Publish, PublishParams, PublishResult, Services,
    ServicesResult, Status, StatusResult, SubscribeParams, TopicsList, TopicsResult, Trace, TraceParams, Version,
    VersionResult,
};
use aiventbus_proto::{ErrorObject, Event, Method};
pub use aiventbus_rpc::ClientError as Error;
use aiventbus_rpc::{Endpoint, Notice};
use serde_json::value::RawValue;

/// How long a call waits for its reply unless told otherwise.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time a call that waits on the daemon's own deadline (`query.ask`, `inbox.poll`) gets, so
/// the daemon's answer arrives before ours gives up.
const DEADLINE_MARGIN: Duration = Duration::from_secs(10);

/// A connection to a running daemon: its public socket, or a gateway over ATP.
#[derive(Clone)]
pub struct Client {
    transport: Transport,
}

#[derive(Clone)]
enum Transport {
    Local {
        rpc: aiventbus_rpc::Client,
        socket: PathBuf,
    },
    Remote(atp::Remote),
}

impl Client {
    /// Connects to the daemon found through the environment (`$AIVENTBUS_RUNTIME_DIR` etc.).
    pub async fn connect_default() -> Result<Client, Error> {
        let paths = aiventbus_rpc::paths::Paths::from_env();
        Client::connect(&paths.api_socket()).await
    }

    /// Connects to the public socket at `socket`; fails at once with `Error::Unavailable` when
    /// nothing listens there.
    pub async fn connect(socket: &Path) -> Result<Client, Error> {
        let rpc = aiventbus_rpc::Client::connect(Endpoint::public(socket)).await?;
        Ok(Client {
            transport: Transport::Local {
                rpc,
                socket: socket.to_path_buf(),
            },
        })
    }

    /// Connects to a gateway over ATP: `url` is its HTTP address (`http://127.0.0.1:8420`,
    /// `https://…`; the WebSocket path `/atp` is added), `token` an API key or session token sent
    /// as `Authorization: Bearer`. Fails with `Error::Unavailable` when nothing answers there and
    /// with an -32001 answer when the gateway refuses the token.
    pub async fn connect_remote(url: &str, token: &str) -> Result<Client, Error> {
        Ok(Client {
            transport: Transport::Remote(atp::Remote::connect(url, token).await?),
        })
    }

    /// The socket path, for a local connection.
    pub fn socket(&self) -> Option<&Path> {
        match &self.transport {
            Transport::Local { socket, .. } => Some(socket),
            Transport::Remote(_) => None,
        }
    }

    /// Where this client talks to: the socket path or the `ws(s)://…/atp` address.
    pub fn target(&self) -> String {
        match &self.transport {
            Transport::Local { socket, .. } => socket.display().to_string(),
            Transport::Remote(remote) => remote.url().to_owned(),
        }
    }

    /// Whether this client talks to a gateway over ATP.
    pub fn is_remote(&self) -> bool {
        matches!(self.transport, Transport::Remote(_))
    }

    /// Calls any method by marker type.
    pub async fn call<M: Method>(&self, params: &M::Params) -> Result<M::Result, Error> {
        self.call_with_timeout::<M>(params, CALL_TIMEOUT).await
    }

    /// Calls any method by marker type, waiting at most `timeout` for the reply.
    pub async fn call_with_timeout<M: Method>(
        &self,
        params: &M::Params,
        timeout: Duration,
    ) -> Result<M::Result, Error> {
        let params = serde_json::value::to_raw_value(params).map_err(|e| Error::Protocol(e.to_string()))?;
        let raw = self.call_raw_with_timeout(M::NAME, Some(params), timeout).await?;
        serde_json::from_str(raw.get()).map_err(|e| Error::Protocol(format!("{} result: {e}", M::NAME)))
    }

    /// Calls a method by name with raw params, returning the raw result.
    pub async fn call_raw(&self, method: &str, params: Option<Box<RawValue>>) -> Result<Box<RawValue>, Error> {
        self.call_raw_with_timeout(method, params, CALL_TIMEOUT).await
    }

    /// Like [`Client::call_raw`] with an explicit deadline.
    pub async fn call_raw_with_timeout(
        &self,
        method: &str,
        params: Option<Box<RawValue>>,
        timeout: Duration,
    ) -> Result<Box<RawValue>, Error> {
        match &self.transport {
            Transport::Local { rpc, .. } => rpc.call_raw_with_timeout(method, params, timeout).await,
            Transport::Remote(remote) => remote.call_raw(method, params, timeout).await,
        }
    }

    /// Asks the agents a question (`query.ask`), waiting as long as the daemon does.
    pub async fn query(&self, params: &QueryParams) -> Result<QueryResult, Error> {
        let wait = Duration::from_millis(params.timeout_ms.unwrap_or(120_000)) + DEADLINE_MARGIN;
        self.call_with_timeout::<QueryAsk>(params, wait).await
    }

    /// Publishes an event; returns once it is committed.
    pub async fn publish(&self, params: &PublishParams) -> Result<PublishResult, Error> {
        self.call::<Publish>(params).await
    }

    /// One event by id.
    pub async fn get(&self, id: &str) -> Result<Event, Error> {
        self.call::<Get>(&IdParams { id: id.to_owned() }).await
    }

    /// Events in seq order.
    pub async fn list(&self, params: &ListParams) -> Result<Vec<Event>, Error> {
        Ok(self.call::<List>(params).await?.events)
    }

    /// An event and its ancestors, root first.
    pub async fn chain(&self, id: &str) -> Result<Vec<Event>, Error> {
        Ok(self.call::<Chain>(&IdParams { id: id.to_owned() }).await?.events)
    }

    /// Every event of a trace.
    pub async fn trace(&self, trace_id: &str) -> Result<EventsResult, Error> {
        self.call::<Trace>(&TraceParams {
            trace_id: trace_id.to_owned(),
        })
        .await
    }

    /// Topics with counts.
    pub async fn topics(&self) -> Result<TopicsResult, Error> {
        self.call::<TopicsList>(&NoParams {}).await
    }

    /// The daemon's health.
    pub async fn status(&self) -> Result<StatusResult, Error> {
        self.call::<Status>(&NoParams {}).await
    }

    /// The supervised services.
    pub async fn services(&self) -> Result<ServicesResult, Error> {
        self.call::<Services>(&NoParams {}).await
    }

    /// Daemon and protocol version.
    pub async fn version(&self) -> Result<VersionResult, Error> {
        self.call::<Version>(&NoParams {}).await
    }

    /// Follows events matching `patterns`, from `from_seq` (inclusive) or live.
    pub async fn subscribe(&self, patterns: Vec<String>, from_seq: Option<u64>) -> Result<EventStream, Error> {
        match &self.transport {
            Transport::Local { rpc, .. } => {
                let params = SubscribeParams { patterns, from_seq };
                let subscription = rpc
                    .subscribe(aiventbus_proto::methods::Subscribe::NAME, &params)
                    .await?;
                Ok(EventStream {
                    inner: StreamInner::Local(subscription),
                })
            }
            Transport::Remote(remote) => Ok(EventStream {
                inner: StreamInner::Remote(remote.subscribe(patterns, from_seq).await?),
            }),
        }
    }
}

/// What a subscription yields.
#[derive(Debug)]
pub enum StreamItem {
    /// The next event.
    Event(Box<Event>),
    /// The daemon ended the subscription and said why (resume with `from_seq`).
    Ended(ErrorObject),
}

/// A live (or replaying) event subscription.
pub struct EventStream {
    inner: StreamInner,
}

enum StreamInner {
    Local(aiventbus_rpc::Subscription),
    Remote(atp::RemoteStream),
}

impl EventStream {
    /// The subscription id (`atp` for a stream over ATP, which has one per connection).
    pub fn id(&self) -> &str {
        match &self.inner {
            StreamInner::Local(subscription) => subscription.id(),
            StreamInner::Remote(_) => "atp",
        }
    }

    /// The first seq this subscription can deliver (where a follower that saw nothing resumes).
    pub fn next_seq(&self) -> Option<u64> {
        match &self.inner {
            StreamInner::Local(subscription) => subscription.next_seq(),
            StreamInner::Remote(stream) => stream.start(),
        }
    }

    /// The next event or the reason the subscription ended; `None` when the connection dropped.
    pub async fn next(&mut self) -> Option<Result<StreamItem, Error>> {
        let subscription = match &mut self.inner {
            StreamInner::Local(subscription) => subscription,
            StreamInner::Remote(stream) => return stream.next().await,
        };
        match subscription.next().await? {
            Notice::Item(raw) => Some(
                serde_json::from_str::<Event>(raw.get())
                    .map(|event| StreamItem::Event(Box::new(event)))
                    .map_err(|e| Error::Protocol(format!("event: {e}"))),
            ),
            Notice::Closed(error) => Some(Ok(StreamItem::Ended(error))),
        }
    }
}
