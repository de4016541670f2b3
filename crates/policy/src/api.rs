//! Policy's methods on `policy.sock`: actions (propose, decide, list), the dry run, the owner's
//! `exec.run`, the human-input hub and `system.health`.

use std::sync::Arc;

use aiventbus_proto::exec::ExecRun;
use aiventbus_proto::methods::{Health, HealthResult, IdParams, NoParams};
use aiventbus_proto::policy::{
    ActionStatus, ActionsApprove, ActionsDeny, ActionsDenyPending, ActionsGet, ActionsHistory, ActionsPending,
    ActionsPropose, ActionsResult, InboxAck, InboxPoll, PolicyExplain, RequestsCreate, RequestsDismiss, RequestsGet,
    RequestsList, RequestsRespond, SessionsHeartbeat, SessionsList, SessionsRegister, SessionsSetState,
};
use aiventbus_rpc::{Methods, RpcError};
use serde_json::{Map, json};

use crate::records;
use crate::state::{State, rpc_error};
use crate::{actions, hub};

async fn list(
    state: &State,
    filter: aiventbus_proto::policy::ActionsListParams,
    pending: bool,
) -> Result<ActionsResult, RpcError> {
    let actions = state
        .db
        .run(move |connection| records::list(connection, &filter, pending))
        .await
        .map_err(rpc_error)?;
    Ok(ActionsResult { actions })
}

async fn health(state: &State) -> Result<HealthResult, RpcError> {
    let (waiting, executing) = state
        .db
        .run(|connection| {
            Ok((
                records::count(connection, ActionStatus::WaitingConfirmation)?,
                records::count(connection, ActionStatus::Executing)?,
            ))
        })
        .await
        .map_err(rpc_error)?;
    let (sessions, sessions_waiting, requests_pending) = hub::figures(state).await?;
    let mut details = Map::new();
    details.insert("pending_actions".into(), json!(waiting));
    details.insert("executing_actions".into(), json!(executing));
    details.insert("sessions".into(), json!(sessions));
    details.insert("sessions_waiting_for_input".into(), json!(sessions_waiting));
    details.insert("pending_requests".into(), json!(requests_pending));
    Ok(HealthResult {
        service: "policy".into(),
        status: "ok".into(),
        details,
    })
}

/// The method table.
pub fn methods(state: Arc<State>) -> Methods<State> {
    let mut table = Methods::new(state);
    table
        .add::<Health, _, _>(|state, _, _: NoParams| async move { health(&state).await })
        .add::<ActionsPropose, _, _>(|state, _, params| async move { actions::propose(&state, params).await })
        .add::<ActionsGet, _, _>(|state, _, params: IdParams| async move {
            state
                .db
                .run(move |connection| records::get_or_not_found(connection, &params.id))
                .await
                .map_err(rpc_error)
        })
        .add::<ActionsPending, _, _>(|state, _, params| async move { list(&state, params, true).await })
        .add::<ActionsHistory, _, _>(|state, _, params| async move { list(&state, params, false).await })
        .add::<ActionsApprove, _, _>(|state, peer, params| async move {
            actions::approve(&state, params, &peer.subject).await
        })
        .add::<ActionsDeny, _, _>(
            |state, peer, params| async move { actions::deny(&state, params, &peer.subject).await },
        )
        .add::<ActionsDenyPending, _, _>(|state, peer, params| async move {
            actions::deny_pending(&state, params, &peer.subject).await
        })
        .add::<PolicyExplain, _, _>(|state, _, params| async move { actions::explain(&state, &params) })
        .add::<ExecRun, _, _>(|state, _, params| async move { actions::exec_run(&state, params).await })
        .add::<SessionsRegister, _, _>(|state, _, params| async move { hub::register(&state, params).await })
        .add::<SessionsHeartbeat, _, _>(|state, _, params| async move { hub::heartbeat(&state, params).await })
        .add::<SessionsSetState, _, _>(|state, _, params| async move { hub::set_state(&state, params).await })
        .add::<SessionsList, _, _>(|state, _, params| async move { hub::list(&state, params).await })
        .add::<RequestsCreate, _, _>(|state, _, params| async move { hub::create_request(&state, params).await })
        .add::<RequestsGet, _, _>(|state, _, params: IdParams| async move { hub::get_request(&state, params.id).await })
        .add::<RequestsList, _, _>(|state, _, params| async move { hub::list_requests(&state, params).await })
        .add::<RequestsRespond, _, _>(
            |state, peer, params| async move { hub::respond(&state, params, &peer.subject).await },
        )
        .add::<RequestsDismiss, _, _>(
            |state, peer, params| async move { hub::dismiss(&state, params, &peer.subject).await },
        )
        .add::<InboxPoll, _, _>(|state, peer, params| async move { hub::poll(&state, params, &peer).await })
        .add::<InboxAck, _, _>(|state, _, params| async move { hub::ack(&state, params).await });
    table
}
