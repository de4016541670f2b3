//! Typed calls for actions and approvals, the policy dry run, and the human-input hub (sessions,
//! requests, inboxes): SPEC §8 and §16.

use std::time::Duration;

use aiventbus_proto::methods::IdParams;
use aiventbus_proto::policy::{
    AckParams, AckResult, ActionRecord, ActionsApprove, ActionsDeny, ActionsDenyPending, ActionsGet, ActionsHistory,
    ActionsListParams, ActionsPending, DecideParams, DenyPendingParams, DenyPendingResult, DismissParams,
    ExplainParams, Explanation, InboxAck, InboxMessage, InboxPoll, PolicyExplain, PollParams, RequestCreateParams,
    RequestInfo, RequestsCreate, RequestsDismiss, RequestsGet, RequestsList, RequestsListParams, RequestsRespond,
    RespondParams, SessionInfo, SessionRef, SessionRegisterParams, SessionState, SessionsHeartbeat, SessionsList,
    SessionsListParams, SessionsRegister, SessionsSetState, SetStateParams,
};

use crate::{CALL_TIMEOUT, Client, DEADLINE_MARGIN, Error};

impl Client {
    /// One action by id (`actions.get`).
    pub async fn action(&self, id: &str) -> Result<ActionRecord, Error> {
        self.call::<ActionsGet>(&IdParams { id: id.to_owned() }).await
    }

    /// Actions waiting for a human, oldest first (`actions.pending`).
    pub async fn pending_actions(&self, params: &ActionsListParams) -> Result<Vec<ActionRecord>, Error> {
        Ok(self.call::<ActionsPending>(params).await?.actions)
    }

    /// Past and present actions, newest first (`actions.history`).
    pub async fn action_history(&self, params: &ActionsListParams) -> Result<Vec<ActionRecord>, Error> {
        Ok(self.call::<ActionsHistory>(params).await?.actions)
    }

    /// Approves a waiting action; -32003 when it is no longer waiting (`actions.approve`).
    pub async fn approve(&self, id: &str) -> Result<ActionRecord, Error> {
        self.call::<ActionsApprove>(&DecideParams {
            id: id.to_owned(),
            ..DecideParams::default()
        })
        .await
    }

    /// Denies a waiting action; -32003 when it is no longer waiting (`actions.deny`).
    pub async fn deny(&self, id: &str, reason: Option<&str>) -> Result<ActionRecord, Error> {
        self.call::<ActionsDeny>(&DecideParams {
            id: id.to_owned(),
            reason: reason.map(str::to_owned),
            ..DecideParams::default()
        })
        .await
    }

    /// Denies every waiting action, or one agent's (`actions.deny_pending`).
    pub async fn deny_pending(&self, params: &DenyPendingParams) -> Result<DenyPendingResult, Error> {
        self.call::<ActionsDenyPending>(params).await
    }

    /// What policy would decide about an action, without recording anything (`policy.explain`).
    pub async fn explain(&self, params: &ExplainParams) -> Result<Explanation, Error> {
        self.call::<PolicyExplain>(params).await
    }

    /// Registers an agent session; returns its `ses_…` id (`sessions.register`).
    pub async fn register_session(&self, params: &SessionRegisterParams) -> Result<String, Error> {
        Ok(self.call::<SessionsRegister>(params).await?.session_id)
    }

    /// Tells the daemon a session is alive (`sessions.heartbeat`).
    pub async fn heartbeat(&self, session_id: &str) -> Result<SessionInfo, Error> {
        self.call::<SessionsHeartbeat>(&SessionRef {
            session_id: session_id.to_owned(),
        })
        .await
    }

    /// Sets a session's state (`sessions.set_state`).
    pub async fn set_session_state(&self, session_id: &str, state: SessionState) -> Result<SessionInfo, Error> {
        self.call::<SessionsSetState>(&SetStateParams {
            session_id: session_id.to_owned(),
            state,
        })
        .await
    }

    /// Sessions, newest first (`sessions.list`).
    pub async fn sessions(&self, params: &SessionsListParams) -> Result<Vec<SessionInfo>, Error> {
        Ok(self.call::<SessionsList>(params).await?.sessions)
    }

    /// Asks a human something for a session; returns the `req_…` id (`requests.create`).
    pub async fn create_request(&self, params: &RequestCreateParams) -> Result<String, Error> {
        Ok(self.call::<RequestsCreate>(params).await?.request_id)
    }

    /// One request by id (`requests.get`).
    pub async fn request(&self, id: &str) -> Result<RequestInfo, Error> {
        self.call::<RequestsGet>(&IdParams { id: id.to_owned() }).await
    }

    /// Requests, oldest first (`requests.list`).
    pub async fn requests(&self, params: &RequestsListParams) -> Result<Vec<RequestInfo>, Error> {
        Ok(self.call::<RequestsList>(params).await?.requests)
    }

    /// Answers a pending request; the answer lands in its session's inbox (`requests.respond`).
    pub async fn respond(&self, params: &RespondParams) -> Result<RequestInfo, Error> {
        self.call::<RequestsRespond>(params).await
    }

    /// Dismisses a pending request (`requests.dismiss`).
    pub async fn dismiss(&self, params: &DismissParams) -> Result<RequestInfo, Error> {
        self.call::<RequestsDismiss>(params).await
    }

    /// A session's messages not yet acked, waiting up to `timeout_ms` (≤ 120 000) for one
    /// (`inbox.poll`).
    pub async fn poll_inbox(&self, session_id: &str, timeout_ms: u64) -> Result<Vec<InboxMessage>, Error> {
        let params = PollParams {
            session_id: session_id.to_owned(),
            timeout_ms,
        };
        let wait = CALL_TIMEOUT.max(Duration::from_millis(timeout_ms) + DEADLINE_MARGIN);
        Ok(self.call_with_timeout::<InboxPoll>(&params, wait).await?.messages)
    }

    /// Acknowledges an inbox message; acking twice is fine (`inbox.ack`).
    pub async fn ack(&self, session_id: &str, message_id: &str) -> Result<AckResult, Error> {
        self.call::<InboxAck>(&AckParams {
            session_id: session_id.to_owned(),
            message_id: message_id.to_owned(),
        })
        .await
    }
}
