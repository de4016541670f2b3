//! The human-input hub end to end (SPEC §8, §16): sessions, requests, the inbox with at-least-once
//! redelivery until ack, a long poll woken by the answer, idempotency keys, and everything kept
//! across a `kill -9` of the policy service.

use std::time::{Duration, Instant};

use aiventbus_client::Client;
use aiventbus_proto::methods::IdParams;
use aiventbus_proto::policy::{
    AckParams, DismissParams, InboxAck, InboxPoll, PollParams, RequestCreateParams, RequestStatus, RequestsCreate,
    RequestsDismiss, RequestsGet, RequestsList, RequestsListParams, RequestsRespond, RespondParams,
    SessionRegisterParams, SessionState, SessionsList, SessionsListParams, SessionsRegister,
};
use aiventbus_testkit::eventually;

use crate::support::{self, rpc_code};

const DEADLINE: Duration = Duration::from_secs(30);

async fn session(client: &Client, name: &str) -> String {
    client
        .call::<SessionsRegister>(&SessionRegisterParams {
            display_name: name.into(),
            metadata: None,
        })
        .await
        .expect("sessions.register")
        .session_id
}

fn request(session_id: &str, title: &str, key: Option<&str>) -> RequestCreateParams {
    RequestCreateParams {
        session_id: session_id.into(),
        title: title.into(),
        question: format!("{title}?"),
        idempotency_key: key.map(str::to_owned),
        ..RequestCreateParams::default()
    }
}

fn respond(id: &str, text: &str, key: Option<&str>) -> RespondParams {
    RespondParams {
        id: id.into(),
        response_text: text.into(),
        idempotency_key: key.map(str::to_owned),
        decided_by: None,
    }
}

async fn state_of(client: &Client, session_id: &str) -> (SessionState, u64) {
    let sessions = client
        .call::<SessionsList>(&SessionsListParams::default())
        .await
        .expect("sessions.list")
        .sessions;
    let session = sessions.iter().find(|s| s.session_id == session_id).expect("listed");
    (session.state, session.pending_requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_redelivered_until_acked_and_survive_a_restart() {
    let daemon = support::start().await;
    let client = daemon.client().await.unwrap();
    let session_id = session(&client, "builder").await;
    assert!(session_id.starts_with("ses_"));

    let first = client
        .call::<RequestsCreate>(&request(&session_id, "deploy", Some("k-1")))
        .await
        .unwrap()
        .request_id;
    let second = client
        .call::<RequestsCreate>(&request(&session_id, "branch", None))
        .await
        .unwrap()
        .request_id;
    // Same key, same body: the same request; same key, another body: a conflict.
    let again = client
        .call::<RequestsCreate>(&request(&session_id, "deploy", Some("k-1")))
        .await
        .unwrap()
        .request_id;
    assert_eq!(again, first);
    let (code, _) = rpc_code(
        client
            .call::<RequestsCreate>(&request(&session_id, "something else", Some("k-1")))
            .await,
    );
    assert_eq!(code, -32003);
    assert_eq!(state_of(&client, &session_id).await, (SessionState::WaitingForInput, 2));

    // A long poll is woken by the answer, well before its timeout.
    let poller = {
        let client = client.clone();
        let session_id = session_id.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = client
                .call::<InboxPoll>(&PollParams {
                    session_id,
                    timeout_ms: 60_000,
                })
                .await
                .expect("inbox.poll");
            (result, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answered = client
        .call::<RequestsRespond>(&respond(&first, "ship it", Some("r-1")))
        .await
        .unwrap();
    assert_eq!(answered.status, RequestStatus::Answered);
    let (polled, waited) = poller.await.unwrap();
    assert!(
        waited < Duration::from_secs(30),
        "woken by the answer, not the timeout: {waited:?}"
    );
    assert_eq!(polled.messages.len(), 1, "{polled:?}");
    let message = &polled.messages[0];
    assert_eq!(message.kind, "input_response");
    assert_eq!(message.payload["request_id"], first.as_str());
    assert_eq!(message.payload["response_text"], "ship it");

    // A retried answer with its key is fine; another answer is a conflict.
    client
        .call::<RequestsRespond>(&respond(&first, "ship it", Some("r-1")))
        .await
        .unwrap();
    let (code, _) = rpc_code(client.call::<RequestsRespond>(&respond(&first, "wait", None)).await);
    assert_eq!(code, -32003);
    // One of two answered: still waiting for input.
    assert_eq!(state_of(&client, &session_id).await, (SessionState::WaitingForInput, 1));

    // Not acked: redelivered, also after the policy service is killed and restarted.
    let policy = daemon.service_pid("policy").await.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(policy as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let redelivered = eventually(DEADLINE, "policy to come back with the message", || {
        let client = client.clone();
        let session_id = session_id.clone();
        async move {
            let polled = client
                .call::<InboxPoll>(&PollParams {
                    session_id,
                    timeout_ms: 0,
                })
                .await
                .ok()?;
            (!polled.messages.is_empty()).then_some(polled)
        }
    })
    .await
    .unwrap();
    assert_eq!(redelivered.messages[0].message_id, message.message_id);
    assert_ne!(daemon.service_pid("policy").await.unwrap(), policy);

    let ack = AckParams {
        session_id: session_id.clone(),
        message_id: message.message_id.clone(),
    };
    assert!(client.call::<InboxAck>(&ack).await.unwrap().acked);
    assert!(
        !client.call::<InboxAck>(&ack).await.unwrap().acked,
        "acking twice is fine"
    );
    let empty = client
        .call::<InboxPoll>(&PollParams {
            session_id: session_id.clone(),
            timeout_ms: 0,
        })
        .await
        .unwrap();
    assert!(empty.messages.is_empty(), "{empty:?}");

    // Dismissing the last pending request ends the wait; a dismissed request cannot be answered.
    client
        .call::<RequestsDismiss>(&DismissParams {
            id: second.clone(),
            ..DismissParams::default()
        })
        .await
        .unwrap();
    let (code, _) = rpc_code(client.call::<RequestsRespond>(&respond(&second, "late", None)).await);
    assert_eq!(code, -32003);
    assert_eq!(state_of(&client, &session_id).await, (SessionState::Working, 0));
    let dismissed = client.call::<RequestsGet>(&IdParams { id: second }).await.unwrap();
    assert_eq!(dismissed.status, RequestStatus::Dismissed);
    let answered_list = client
        .call::<RequestsList>(&RequestsListParams {
            status: Some(RequestStatus::Answered),
            ..RequestsListParams::default()
        })
        .await
        .unwrap()
        .requests;
    assert_eq!(answered_list.len(), 1);
    let (code, _) = rpc_code(
        client
            .call::<InboxPoll>(&PollParams {
                session_id: "ses_01J0000000000000000000000".into(),
                timeout_ms: 0,
            })
            .await,
    );
    assert_eq!(code, -32002);
}
