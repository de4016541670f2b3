//! The typed SDK for the aiventbus local API (`api.sock`): publish, read and follow events, and ask
//! the daemon how it is. This is the one crate a third-party Rust program needs.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

pub use aiventbus_proto as proto;
use aiventbus_proto::methods::{
    Chain, EventsResult, Get, IdParams, List, ListParams, NoParams, Publish, PublishParams, PublishResult, Services,
    ServicesResult, Status, StatusResult, SubscribeParams, TopicsList, TopicsResult, Trace, TraceParams, Version,
    VersionResult,
};
use aiventbus_proto::{ErrorObject, Event, Method};
pub use aiventbus_rpc::ClientError as Error;
use aiventbus_rpc::{Endpoint, Notice};

/// A connection to a running daemon's public socket.
#[derive(Clone)]
pub struct Client {
    rpc: aiventbus_rpc::Client,
    socket: PathBuf,
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
            rpc,
            socket: socket.to_path_buf(),
        })
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Calls any method by marker type.
    pub async fn call<M: Method>(&self, params: &M::Params) -> Result<M::Result, Error> {
        self.rpc.call::<M>(params).await
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
        let params = SubscribeParams { patterns, from_seq };
        let subscription = self
            .rpc
            .subscribe(aiventbus_proto::methods::Subscribe::NAME, &params)
            .await?;
        Ok(EventStream { subscription })
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
    subscription: aiventbus_rpc::Subscription,
}

impl EventStream {
    /// The subscription id.
    pub fn id(&self) -> &str {
        self.subscription.id()
    }

    /// The first seq this subscription can deliver (where a follower that saw nothing resumes).
    pub fn next_seq(&self) -> Option<u64> {
        self.subscription.next_seq()
    }

    /// The next event or the reason the subscription ended; `None` when the connection dropped.
    pub async fn next(&mut self) -> Option<Result<StreamItem, Error>> {
        match self.subscription.next().await? {
            Notice::Item(raw) => Some(
                serde_json::from_str::<Event>(raw.get())
                    .map(|event| StreamItem::Event(Box::new(event)))
                    .map_err(|e| Error::Protocol(format!("event: {e}"))),
            ),
            Notice::Closed(error) => Some(Ok(StreamItem::Ended(error))),
        }
    }
}
