//! The policy service in-process against a fake bus and a fake exec on real sockets with token
//! authentication: decisions and their records and events, approvals with compare-and-set, expiry,
//! at-most-once execution through exec restarts and policy restarts, rate limiting, the owner's
//! `exec.run`, and the human-input hub (long polls, redelivery, idempotency, durability).

mod fake;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aiventbus_policy::records::{self, NewAction};
use aiventbus_policy::state::State;
use aiventbus_policy::{Options, Running, Settings};
use aiventbus_proto::Event;
use aiventbus_proto::agents::Trust;
use aiventbus_proto::exec::{ExecRun, Outcome, RunParams};
use aiventbus_proto::methods::{Health, IdParams, NoParams, PublishParams};
use aiventbus_proto::policy::{
    AckParams, ActionStatus, ActionsApprove, ActionsDeny, ActionsDenyPending, ActionsGet, ActionsHistory,
    ActionsListParams, ActionsPending, ActionsPropose, AgentPolicy, DecideParams, Decision, DenyPendingParams,
    DismissParams, ExplainParams, InboxAck, InboxPoll, MessageStatus, PolicyExplain, PollParams, ProposeParams,
    ProposeResult, RequestCreateParams, RequestStatus, RequestsCreate, RequestsDismiss, RequestsGet, RequestsList,
    RequestsListParams, RequestsRespond, RespondParams, SessionRef, SessionRegisterParams, SessionState,
    SessionsHeartbeat, SessionsList, SessionsListParams, SessionsRegister, SessionsSetState, SetStateParams,
};
use aiventbus_rpc::config::{ExecConfig, PolicyConfig, RpcConfig};
use aiventbus_rpc::token::Verifier;
use aiventbus_rpc::{Auth, Client, ClientError, Endpoint, TokenSource};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::fake::{Behavior, CrashingExec, DEADLINE, FakeBus, FakeExec, Keys, Server};

// ------------------------------------------------------------------ harness

struct Harness {
    dir: tempfile::TempDir,
    keys: Keys,
    bus: FakeBus,
    _bus_server: Server,
    exec: FakeExec,
    exec_server: Option<Server>,
    settings: Settings,
    policy_config: PolicyConfig,
    running: Option<(CancellationToken, Running)>,
}

impl Harness {
    /// A fake bus and exec (serving) and policy started with `settings`.
    async fn start(change: impl FnOnce(&mut Settings)) -> Harness {
        let mut harness = Harness::new(change).await;
        harness.start_policy().await;
        harness
    }

    /// A fake bus and exec (serving); policy not started.
    async fn new(change: impl FnOnce(&mut Settings)) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["home", "state", "run"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        let keys = Keys::new();
        let bus = FakeBus::new(dir.path().join("run/bus.sock"));
        let bus_server = bus.serve(&keys.bus).await;
        let exec = FakeExec::new(dir.path().join("run/exec.sock"), dir.path().join("state/policy.db"));
        let exec_server = Some(exec.serve(&keys.exec).await);
        let policy_config = PolicyConfig::default();
        let mut settings = Settings::from_config(&policy_config, &ExecConfig::default());
        change(&mut settings);
        std::fs::write(
            dir.path().join("run/token.bus"),
            keys.token(
                "bus",
                "policy",
                &["events.publish", "events.get", "events.chain", "system.health"],
            ),
        )
        .expect("token");
        std::fs::write(
            dir.path().join("run/token.exec"),
            keys.token(
                "exec",
                "policy",
                &["exec.execute", "exec.outcome", "exec.notify", "system.health"],
            ),
        )
        .expect("token");
        Harness {
            dir,
            keys,
            bus,
            _bus_server: bus_server,
            exec,
            exec_server,
            settings,
            policy_config,
            running: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn database(&self) -> PathBuf {
        self.path("state/policy.db")
    }

    async fn start_policy(&mut self) {
        let options = Options {
            database: self.database(),
            socket: self.path("run/policy.sock"),
            auth: Auth::Token(Verifier::new("policy", &self.keys.policy)),
            rpc: RpcConfig::default(),
            policy: self.policy_config.clone(),
            settings: self.settings.clone(),
            home: self.path("home"),
            protected: vec![self.path("state"), self.path("run")],
            bus: Endpoint::internal(self.path("run/bus.sock"), self.path("run/token.bus")),
            exec: Endpoint::internal(self.path("run/exec.sock"), self.path("run/token.exec")),
            exec_token: self.path("run/token.exec"),
        };
        let stop = CancellationToken::new();
        let running = tokio::time::timeout(DEADLINE, aiventbus_policy::start(options, stop.clone()))
            .await
            .expect("policy start timed out")
            .expect("policy start");
        self.running = Some((stop, running));
    }

    async fn stop_policy(&mut self) {
        let (stop, running) = self.running.take().expect("policy running");
        stop.cancel();
        tokio::time::timeout(DEADLINE, running.stopped())
            .await
            .expect("policy stop timed out");
    }

    fn state(&self) -> &Arc<State> {
        &self.running.as_ref().expect("policy running").1.state
    }

    /// A client of policy.sock holding a token for `subject`.
    fn client(&self, subject: &str) -> Client {
        Client::new(Endpoint {
            path: self.path("run/policy.sock"),
            token: TokenSource::Static(self.keys.token("policy", subject, &["*"])),
        })
    }

    /// llm's view: a client that proposes.
    fn llm(&self) -> Client {
        self.client("llm")
    }

    /// The gateway's view: decisions, lists, the hub.
    fn gateway(&self) -> Client {
        self.client("gateway")
    }

    /// Publishes an event as a producer would and returns it.
    fn event(&self, topic: &str, parent: Option<&Event>) -> Event {
        self.bus.publish(PublishParams {
            topic: topic.into(),
            payload: Some(json!({})),
            source: Some("user:alice".into()),
            parent_event: parent.map(|event| event.id.clone()),
            ..PublishParams::default()
        })
    }
}

fn agent(id: &str) -> AgentPolicy {
    AgentPolicy {
        id: id.into(),
        reactive: true,
        allowed_actions: None,
        trust: Default::default(),
    }
}

fn object(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("an object")
}

fn proposal(agent_id: &str, event: &Event, action_type: &str, params: Value) -> ProposeParams {
    ProposeParams {
        action_type: action_type.into(),
        params: object(params),
        agent: agent(agent_id),
        event_id: event.id.clone(),
        run_id: "run_test".into(),
        assignment_id: "asg_test".into(),
    }
}

async fn propose(client: &Client, params: &ProposeParams) -> ProposeResult {
    client.call::<ActionsPropose>(params).await.expect("actions.propose")
}

fn error_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (i32, String) {
    match result {
        Err(ClientError::Rpc(error)) => (error.code, error.message),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

fn decide(id: &str) -> DecideParams {
    DecideParams {
        id: id.into(),
        ..DecideParams::default()
    }
}

async fn get(client: &Client, id: &str) -> aiventbus_proto::policy::ActionRecord {
    client
        .call::<ActionsGet>(&IdParams { id: id.into() })
        .await
        .expect("actions.get")
}

// ------------------------------------------------------------------ actions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_action_is_committed_executing_before_exec_runs_it() {
    let harness = Harness::start(|_| {}).await;
    let llm = harness.llm();
    let event = harness.event("user.query", None);

    let answer = propose(&llm, &proposal("agt_a", &event, "shell_exec", json!({"argv": ["ls"]}))).await;
    assert_eq!(answer.decision, Decision::Allow, "{answer:?}");
    assert_eq!(answer.status, ActionStatus::Succeeded);
    assert_eq!(answer.result.as_ref().unwrap()["stdout"], "done\n");
    assert!(answer.action_id.starts_with("act_"));

    let received = harness.exec.executes_of(&answer.action_id);
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].status_in_db.as_deref(),
        Some("executing"),
        "the record says executing before exec is called"
    );
    assert_eq!(received[0].params.parent_event.as_deref(), Some(event.id.as_str()));
    assert_eq!(received[0].params.trace_id.as_deref(), Some(event.trace_id.as_str()));
    assert_eq!(received[0].params.agent_id.as_deref(), Some("agt_a"));
    assert!(!received[0].params.owner);

    let record = get(&llm, &answer.action_id).await;
    assert_eq!(record.status, ActionStatus::Succeeded);
    assert_eq!(record.decided_by.as_deref(), Some("policy"));
    assert!(record.exec_run_id.is_some());

    let executed = harness
        .bus
        .wait_for("action.executed", |e| {
            e.payload["action_id"] == answer.action_id.as_str()
        })
        .await;
    assert_eq!(executed.payload["status"], "succeeded");
    assert_eq!(executed.payload["ok"], true);
    assert_eq!(executed.trace_id, event.trace_id);
    assert_eq!(executed.parent_event.as_deref(), Some(event.id.as_str()));
    assert_eq!(executed.correlation_id.as_deref(), Some(answer.action_id.as_str()));
    assert_eq!(executed.source, "system");
    assert!(harness.bus.on("action.pending").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_action_waits_and_a_second_approval_conflicts() {
    let harness = Harness::start(|_| {}).await;
    let (llm, gateway) = (harness.llm(), harness.gateway());
    let event = harness.event("user.query", None);

    let answer = propose(
        &llm,
        &proposal("agt_a", &event, "shell_exec", json!({"argv": ["touch", "report.txt"]})),
    )
    .await;
    assert_eq!(answer.status, ActionStatus::WaitingConfirmation, "{answer:?}");
    assert_eq!(answer.decision, Decision::Confirm);
    let pending = harness
        .bus
        .wait_for("action.pending", |e| {
            e.payload["action_id"] == answer.action_id.as_str()
        })
        .await;
    assert_eq!(pending.payload["params"]["argv"], json!(["touch", "report.txt"]));
    assert_eq!(pending.payload["run_id"], "run_test");
    assert_eq!(pending.trace_id, event.trace_id);
    let notification = harness.exec.wait_notification().await;
    assert_eq!(notification.title, "aiventbus: approval needed");
    assert!(notification.message.contains("agt_a"), "{}", notification.message);
    assert!(
        notification.message.contains("touch report.txt"),
        "{}",
        notification.message
    );

    let listed = gateway
        .call::<ActionsPending>(&ActionsListParams::default())
        .await
        .expect("pending");
    assert_eq!(listed.actions.len(), 1);
    assert!(listed.actions[0].expires_at.is_some());
    assert!(harness.exec.executes_of(&answer.action_id).is_empty());

    let approve = DecideParams {
        decided_by: Some("user:alice".into()),
        via: Some("http".into()),
        ..decide(&answer.action_id)
    };
    let approved = gateway.call::<ActionsApprove>(&approve).await.expect("approve");
    assert_eq!(approved.status, ActionStatus::Approved);
    assert_eq!(approved.decided_by.as_deref(), Some("user:alice"));
    assert_eq!(approved.decided_via.as_deref(), Some("http"));
    assert!(approved.decided_at.is_some());
    let (code, message) = error_of(gateway.call::<ActionsApprove>(&decide(&answer.action_id)).await);
    assert_eq!(code, -32003, "{message}");
    assert!(message.contains("not waiting_confirmation"), "{message}");

    harness
        .bus
        .wait_for("action.approved", |e| {
            e.payload["action_id"] == answer.action_id.as_str()
        })
        .await;
    let executed = harness
        .bus
        .wait_for("action.executed", |e| {
            e.payload["action_id"] == answer.action_id.as_str()
        })
        .await;
    assert_eq!(executed.payload["status"], "succeeded");
    assert_eq!(harness.exec.executes_of(&answer.action_id).len(), 1, "ran exactly once");
    let record = get(&gateway, &answer.action_id).await;
    assert_eq!(record.status, ActionStatus::Succeeded);
    assert_eq!(record.decided_by.as_deref(), Some("user:alice"));
    let (code, _) = error_of(gateway.call::<ActionsDeny>(&decide(&answer.action_id)).await);
    assert_eq!(code, -32003);
    let (code, _) = error_of(gateway.call::<ActionsApprove>(&decide("act_unknown")).await);
    assert_eq!(code, -32002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_answers_at_once_while_exec_carries_it_out() {
    let mut harness = Harness::start(|_| {}).await;
    harness.exec.data().behavior = Behavior::Hang;
    let (llm, gateway) = (harness.llm(), harness.gateway());
    let event = harness.event("user.query", None);
    let answer = propose(
        &llm,
        &proposal("agt_a", &event, "shell_exec", json!({"argv": ["sleep", "600"]})),
    )
    .await;
    assert_eq!(answer.status, ActionStatus::WaitingConfirmation, "{answer:?}");
    let approved = gateway
        .call::<ActionsApprove>(&decide(&answer.action_id))
        .await
        .expect("approve");
    assert_eq!(approved.status, ActionStatus::Approved);
    let received = harness.exec.wait_execute(&answer.action_id).await;
    assert_eq!(received.status_in_db.as_deref(), Some("executing"));
    assert_eq!(get(&gateway, &answer.action_id).await.status, ActionStatus::Executing);
    // Stopping leaves it executing, for the next start to ask exec about.
    harness.stop_policy().await;
    let db = aiventbus_policy::db::Db::open(&harness.database()).expect("db");
    let id = answer.action_id.clone();
    let record = db
        .run(move |connection| records::get(connection, &id))
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(record.status, ActionStatus::Executing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_denial_records_who_and_why() {
    let harness = Harness::start(|_| {}).await;
    let (llm, gateway) = (harness.llm(), harness.gateway());
    let event = harness.event("user.query", None);
    let answer = propose(
        &llm,
        &proposal(
            "agt_a",
            &event,
            "file_write",
            json!({"path": "~/notes.txt", "content": "x"}),
        ),
    )
    .await;
    assert_eq!(answer.status, ActionStatus::WaitingConfirmation, "{answer:?}");

    let deny = DecideParams {
        reason: Some("not now".into()),
        ..decide(&answer.action_id)
    };
    let denied = gateway.call::<ActionsDeny>(&deny).await.expect("deny");
    assert_eq!(denied.status, ActionStatus::Denied);
    assert_eq!(denied.denial_reason.as_deref(), Some("not now"));
    assert_eq!(
        denied.decided_by.as_deref(),
        Some("gateway"),
        "defaults to the token's subject"
    );
    assert_eq!(denied.decided_via.as_deref(), Some("api.sock"));
    let event = harness
        .bus
        .wait_for("action.denied", |e| e.payload["action_id"] == answer.action_id.as_str())
        .await;
    assert_eq!(event.payload["reason"], "not now");
    let (code, message) = error_of(gateway.call::<ActionsApprove>(&decide(&answer.action_id)).await);
    assert_eq!(code, -32003);
    assert!(message.contains("denied"), "{message}");
    assert!(harness.exec.data().executes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_rules_refuse_at_once_and_leave_nothing_pending() {
    let harness = Harness::start(|_| {}).await;
    let (llm, gateway) = (harness.llm(), harness.gateway());
    let event = harness.event("user.query", None);
    let answer = propose(
        &llm,
        &proposal("agt_a", &event, "shell_exec", json!({"command": "ls && rm -rf ~"})),
    )
    .await;
    assert_eq!(answer.status, ActionStatus::Denied, "{answer:?}");
    assert_eq!(answer.decision, Decision::Deny);
    assert!(answer.rule.starts_with("deny."), "{}", answer.rule);
    let denied = harness
        .bus
        .wait_for("system.action_denied", |e| {
            e.payload["action_id"] == answer.action_id.as_str()
        })
        .await;
    assert_eq!(denied.payload["rule"], answer.rule.as_str());
    assert_eq!(denied.payload["agent_id"], "agt_a");
    assert_eq!(denied.payload["event_id"], event.id.as_str());
    assert_eq!(denied.trace_id, event.trace_id);
    let pending = gateway
        .call::<ActionsPending>(&ActionsListParams::default())
        .await
        .expect("pending");
    assert!(pending.actions.is_empty());
    let record = get(&gateway, &answer.action_id).await;
    assert_eq!(
        (record.status, record.decided_by.as_deref()),
        (ActionStatus::Denied, Some("policy"))
    );
    assert!(harness.exec.data().executes.is_empty());
    assert!(harness.bus.on("action.pending").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_ancestor_makes_an_allowed_command_wait() {
    let harness = Harness::start(|_| {}).await;
    let llm = harness.llm();
    let clipboard = harness.event("clipboard.text", None);
    let derived = harness.event("agent.summary", Some(&clipboard));
    let clean = harness.event("user.query", None);

    let tainted = propose(
        &llm,
        &proposal("agt_a", &derived, "shell_exec", json!({"argv": ["ls"]})),
    )
    .await;
    assert_eq!(tainted.status, ActionStatus::WaitingConfirmation, "{tainted:?}");
    assert_eq!(tainted.rule, "taint");
    assert!(get(&llm, &tainted.action_id).await.tainted);
    assert!(harness.exec.data().executes.is_empty());

    // (Another agent: the same proposal of agt_a would collapse into the waiting one.)
    let trusted = propose(&llm, &proposal("agt_b", &clean, "shell_exec", json!({"argv": ["ls"]}))).await;
    assert_eq!(trusted.status, ActionStatus::Succeeded, "{trusted:?}");
    assert!(!get(&llm, &trusted.action_id).await.tainted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_actions_expire() {
    let harness = Harness::start(|settings| settings.approval_ttl = Duration::from_millis(300)).await;
    let (llm, gateway) = (harness.llm(), harness.gateway());
    let event = harness.event("user.query", None);
    let answer = propose(
        &llm,
        &proposal("agt_a", &event, "shell_exec", json!({"argv": ["touch", "x"]})),
    )
    .await;
    assert_eq!(answer.status, ActionStatus::WaitingConfirmation, "{answer:?}");
    let expired = harness
        .bus
        .wait_for("action.expired", |e| {
            e.payload["action_id"] == answer.action_id.as_str()
        })
        .await;
    assert!(expired.payload["reason"].as_str().unwrap().contains("expired"));
    assert_eq!(expired.trace_id, event.trace_id);
    assert_eq!(get(&gateway, &answer.action_id).await.status, ActionStatus::Expired);
    let (code, message) = error_of(gateway.call::<ActionsApprove>(&decide(&answer.action_id)).await);
    assert_eq!(code, -32003);
    assert!(message.contains("expired"), "{message}");
    assert!(harness.exec.data().executes.is_empty());
}

fn seeded(id: &str, status: ActionStatus, expires_ms: Option<u64>) -> NewAction {
    NewAction {
        id: id.into(),
        action_type: "shell_exec".into(),
        params: object(json!({"argv": ["touch", id]})),
        canonical: id.into(),
        status,
        agent_id: Some("agt_a".into()),
        event_id: None,
        trace_id: None,
        run_id: Some("run_test".into()),
        assignment_id: Some("asg_test".into()),
        tainted: false,
        decision: Decision::Confirm,
        rule: "trust.default.shell_exec".into(),
        reason: "asks".into(),
        resolved_path: None,
        expires_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resolves_unfinished_actions_without_running_anything_twice() {
    let mut harness = Harness::new(|_| {}).await;
    // Left from before the restart: one handed to exec, one approved but never handed over, one
    // waiting past its expiry.
    let db = aiventbus_policy::db::Db::open(&harness.database()).expect("db");
    db.run(|connection| {
        records::insert(
            connection,
            &seeded("act_was_executing", ActionStatus::Approved, None),
            1,
        )?;
        records::mark_executing(connection, "act_was_executing", 2)?;
        records::insert(connection, &seeded("act_was_approved", ActionStatus::Approved, None), 1)?;
        records::insert(
            connection,
            &seeded("act_was_waiting", ActionStatus::WaitingConfirmation, Some(5)),
            1,
        )?;
        Ok(())
    })
    .await
    .expect("seed");
    drop(db);
    // exec lost the first one when it restarted.
    harness.exec.data().outcomes.insert(
        "act_was_executing".into(),
        Outcome {
            action_id: "act_was_executing".into(),
            status: "interrupted".into(),
            result: Some(json!({"error": {"message": "exec restarted while this ran; not re-run"}})),
            run_id: None,
        },
    );
    harness.start_policy().await;
    let gateway = harness.gateway();

    let interrupted = harness
        .bus
        .wait_for("action.executed", |e| e.payload["action_id"] == "act_was_executing")
        .await;
    assert_eq!(interrupted.payload["status"], "interrupted");
    assert_eq!(interrupted.payload["ok"], false);
    assert_eq!(
        get(&gateway, "act_was_executing").await.status,
        ActionStatus::Interrupted
    );

    let ran = harness
        .bus
        .wait_for("action.executed", |e| e.payload["action_id"] == "act_was_approved")
        .await;
    assert_eq!(ran.payload["status"], "succeeded");
    harness
        .bus
        .wait_for("action.expired", |e| e.payload["action_id"] == "act_was_waiting")
        .await;

    // Restart once more: nothing is left to resume, nothing runs again.
    harness.stop_policy().await;
    harness.start_policy().await;
    let health = harness.gateway().call::<Health>(&NoParams {}).await.expect("health");
    assert_eq!(health.details["executing_actions"], 0);
    assert!(
        harness.exec.executes_of("act_was_executing").is_empty(),
        "never re-sent"
    );
    assert_eq!(harness.exec.executes_of("act_was_approved").len(), 1);
    assert_eq!(
        harness.exec.executes_of("act_was_approved")[0].status_in_db.as_deref(),
        Some("executing")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_dying_mid_call_is_resolved_through_its_outcome_not_a_second_send() {
    let mut harness = Harness::new(|settings| settings.outcome_backoff_max = Duration::from_millis(200)).await;
    harness.exec_server.take().expect("exec serving").stop().await;
    let crashing = CrashingExec::start(&harness.path("run/exec.sock")).await;
    harness.start_policy().await;
    let llm = harness.llm();
    let event = harness.event("user.query", None);

    let params = proposal("agt_a", &event, "shell_exec", json!({"argv": ["ls"]}));
    let proposing = tokio::spawn(async move { llm.call::<ActionsPropose>(&params).await });
    let swallowed = crashing.wait_swallowed("exec.execute").await;
    let action_id = swallowed["action_id"].as_str().expect("action id").to_owned();
    // exec comes back having finished it before it died.
    crashing.stop();
    harness.exec.data().outcomes.insert(
        action_id.clone(),
        Outcome {
            action_id: action_id.clone(),
            status: "succeeded".into(),
            result: Some(json!({"exit_code": 0, "stdout": "from before\n"})),
            run_id: Some("run_before".into()),
        },
    );
    harness.exec_server = Some(harness.exec.serve(&harness.keys.exec).await);

    let answer = tokio::time::timeout(DEADLINE, proposing)
        .await
        .expect("propose answered")
        .expect("task")
        .expect("propose");
    assert_eq!(answer.action_id, action_id);
    assert_eq!(answer.status, ActionStatus::Succeeded);
    assert_eq!(answer.result.unwrap()["stdout"], "from before\n");
    assert!(
        harness.exec.executes_of(&action_id).is_empty(),
        "never sent a second time"
    );
    let record = get(&harness.gateway(), &action_id).await;
    assert_eq!(record.exec_run_id.as_deref(), Some("run_before"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_exec_never_received_is_interrupted() {
    let mut harness = Harness::new(|settings| settings.outcome_backoff_max = Duration::from_millis(200)).await;
    harness.exec_server.take().expect("exec serving").stop().await;
    let crashing = CrashingExec::start(&harness.path("run/exec.sock")).await;
    harness.start_policy().await;
    let llm = harness.llm();
    let event = harness.event("user.query", None);
    let params = proposal("agt_a", &event, "shell_exec", json!({"argv": ["ls"]}));
    let proposing = tokio::spawn(async move { llm.call::<ActionsPropose>(&params).await });
    let swallowed = crashing.wait_swallowed("exec.execute").await;
    let action_id = swallowed["action_id"].as_str().expect("action id").to_owned();
    crashing.stop();
    // The restarted exec has no record of it.
    harness.exec_server = Some(harness.exec.serve(&harness.keys.exec).await);
    let answer = tokio::time::timeout(DEADLINE, proposing)
        .await
        .expect("propose answered")
        .expect("task")
        .expect("propose");
    assert_eq!(answer.status, ActionStatus::Interrupted);
    let executed = harness
        .bus
        .wait_for("action.executed", |e| e.payload["action_id"] == action_id.as_str())
        .await;
    assert_eq!(executed.payload["status"], "interrupted");
    assert!(
        harness.exec.executes_of(&action_id).is_empty(),
        "at most once: not re-sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_proposals_is_refused_and_reported_once_per_window() {
    let mut harness = Harness::start(|settings| {
        settings.rate_limit = 2;
        settings.max_pending_per_agent = 100;
    })
    .await;
    let llm = harness.llm();
    let event = harness.event("user.query", None);
    let mut answers = Vec::new();
    for n in 0..5 {
        let params = proposal(
            "agt_a",
            &event,
            "shell_exec",
            json!({"argv": ["touch", format!("f{n}")]}),
        );
        answers.push(propose(&llm, &params).await);
    }
    // Another agent has its own budget.
    let other = propose(
        &llm,
        &proposal("agt_b", &event, "shell_exec", json!({"argv": ["touch", "g"]})),
    )
    .await;
    assert_eq!(other.status, ActionStatus::WaitingConfirmation);

    let statuses: Vec<_> = answers
        .iter()
        .map(|answer| (answer.status, answer.rule.as_str()))
        .collect();
    assert_eq!(
        statuses[..2]
            .iter()
            .filter(|(status, _)| *status == ActionStatus::WaitingConfirmation)
            .count(),
        2
    );
    for (status, rule) in &statuses[2..] {
        assert_eq!((*status, *rule), (ActionStatus::Denied, "rate_limited"));
    }
    let history = harness
        .gateway()
        .call::<ActionsHistory>(&ActionsListParams {
            agent_id: Some("agt_a".into()),
            ..ActionsListParams::default()
        })
        .await
        .expect("history");
    assert_eq!(history.actions.len(), 5, "every proposal has a record");
    assert!(
        harness.bus.on("system.action_denied").is_empty(),
        "not one event per proposal"
    );
    assert!(
        harness.bus.on("system.action_rate_limited").is_empty(),
        "reported when the window ends"
    );

    // Stopping ends the window early; its one report counts every refusal.
    harness.stop_policy().await;
    let reports = harness.bus.on("system.action_rate_limited");
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].payload["suppressed"], 3);
    assert_eq!(reports[0].payload["agent_id"], "agt_a");
    assert_eq!(reports[0].payload["action_type"], "shell_exec");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_proposals_collapse_and_pending_is_capped_per_agent() {
    let harness = Harness::start(|settings| settings.max_pending_per_agent = 2).await;
    let (llm, gateway) = (harness.llm(), harness.gateway());
    let event = harness.event("user.query", None);
    let first = propose(
        &llm,
        &proposal(
            "agt_a",
            &event,
            "shell_exec",
            json!({"argv": ["touch", "x"], "cwd": "/tmp"}),
        ),
    )
    .await;
    // The same params in another key order.
    let mut same = proposal("agt_a", &event, "shell_exec", json!({}));
    same.params.insert("cwd".into(), json!("/tmp"));
    same.params.insert("argv".into(), json!(["touch", "x"]));
    let second = propose(&llm, &same).await;
    assert_eq!(first.status, ActionStatus::WaitingConfirmation);
    assert_eq!(second.action_id, first.action_id);
    let all = gateway
        .call::<ActionsHistory>(&ActionsListParams::default())
        .await
        .expect("history");
    assert_eq!(all.actions.len(), 1, "no second record");

    let other = propose(
        &llm,
        &proposal("agt_a", &event, "shell_exec", json!({"argv": ["touch", "y"]})),
    )
    .await;
    assert_eq!(other.status, ActionStatus::WaitingConfirmation);
    let third = propose(
        &llm,
        &proposal("agt_a", &event, "shell_exec", json!({"argv": ["touch", "z"]})),
    )
    .await;
    assert_eq!(
        (third.status, third.rule.as_str()),
        (ActionStatus::Denied, "too_many_pending")
    );
    harness
        .bus
        .wait_for("system.action_denied", |e| e.payload["rule"] == "too_many_pending")
        .await;

    // Denying everything of the agent frees its budget.
    let denied = gateway
        .call::<ActionsDenyPending>(&DenyPendingParams {
            agent_id: Some("agt_a".into()),
            reason: Some("cleanup".into()),
            ..DenyPendingParams::default()
        })
        .await
        .expect("deny_pending");
    assert_eq!(denied.denied, 2);
    let again = propose(
        &llm,
        &proposal(
            "agt_a",
            &event,
            "shell_exec",
            json!({"argv": ["touch", "x"], "cwd": "/tmp"}),
        ),
    )
    .await;
    assert_eq!(again.status, ActionStatus::WaitingConfirmation);
    assert_ne!(again.action_id, first.action_id, "the earlier one is decided");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_settings_are_weighed() {
    let harness = Harness::start(|_| {}).await;
    let llm = harness.llm();
    let event = harness.event("user.query", None);
    let mut params = proposal("agt_a", &event, "shell_exec", json!({"argv": ["touch", "x"]}));
    params.agent.trust.insert("shell_exec".into(), Trust::Deny);
    let answer = propose(&llm, &params).await;
    assert_eq!(answer.status, ActionStatus::Denied, "{answer:?}");
    assert!(answer.rule.contains("agent"), "{}", answer.rule);
    let (code, message) = error_of(
        llm.call::<ActionsPropose>(&ProposeParams {
            event_id: String::new(),
            ..params
        })
        .await,
    );
    assert_eq!(code, -32602);
    assert!(message.contains("event_id"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_is_a_dry_run() {
    let harness = Harness::start(|_| {}).await;
    let gateway = harness.gateway();
    let explained = gateway
        .call::<PolicyExplain>(&ExplainParams {
            action: object(json!({"action_type": "shell_exec", "params": {"command": "ls && rm -rf ~"}})),
            ..ExplainParams::default()
        })
        .await
        .expect("explain");
    assert_eq!(explained.decision, Decision::Deny);
    assert!(explained.commands.len() >= 2, "{explained:?}");
    let tainted = gateway
        .call::<PolicyExplain>(&ExplainParams {
            action: object(json!({"action_type": "shell_exec", "argv": ["ls"]})),
            topic: Some("clipboard.text".into()),
            ..ExplainParams::default()
        })
        .await
        .expect("explain");
    assert!(tainted.tainted);
    assert_eq!((tainted.decision, tainted.rule.as_str()), (Decision::Confirm, "taint"));
    let (code, message) = error_of(
        gateway
            .call::<PolicyExplain>(&ExplainParams {
                action: object(json!({"argv": ["ls"]})),
                ..ExplainParams::default()
            })
            .await,
    );
    assert_eq!(code, -32602);
    assert!(message.contains("action.action_type"), "{message}");
    let history = gateway
        .call::<ActionsHistory>(&ActionsListParams::default())
        .await
        .expect("history");
    assert!(history.actions.is_empty(), "explain records nothing");
    assert!(harness.bus.events().is_empty(), "explain publishes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_exec_run_applies_deny_rules_only() {
    let harness = Harness::start(|_| {}).await;
    let gateway = harness.gateway();
    let refused = gateway
        .call::<ExecRun>(&RunParams {
            argv: vec!["rm".into(), "-rf".into(), "~".into()],
            requested_by: Some("user:alice".into()),
            ..RunParams::default()
        })
        .await;
    let (code, message) = error_of(refused);
    assert_eq!(code, -32001);
    assert!(message.starts_with("refused by policy (deny."), "{message}");
    let denied = harness.bus.wait_for("system.action_denied", |_| true).await;
    assert_eq!(denied.payload["argv"], json!(["rm", "-rf", "~"]));
    assert!(harness.exec.data().executes.is_empty());

    let started = gateway
        .call::<ExecRun>(&RunParams {
            argv: vec!["/bin/true".into()],
            cwd: Some("/tmp".into()),
            timeout_ms: Some(5000),
            ..RunParams::default()
        })
        .await
        .expect("exec.run");
    assert!(started.run_id.starts_with("run_"));
    let received = harness.exec.wait_execute(&started.run_id).await;
    assert!(received.params.owner && received.params.detach);
    assert_eq!(received.params.action_type, "shell_exec");
    assert_eq!(received.params.params["argv"], json!(["/bin/true"]));
    assert_eq!(received.params.params["cwd"], "/tmp");
    assert_eq!(received.params.params["timeout_ms"], 5000);
    assert!(
        harness.exec.data().refused.is_empty(),
        "the token is bound to the run id"
    );

    let (code, message) = error_of(gateway.call::<ExecRun>(&RunParams::default()).await);
    assert_eq!(code, -32602);
    assert!(message.contains("argv"), "{message}");
}

// ------------------------------------------------------------------ human input

async fn register(client: &Client, name: &str) -> String {
    client
        .call::<SessionsRegister>(&SessionRegisterParams {
            display_name: name.into(),
            metadata: Some(json!({"pid": 42})),
        })
        .await
        .expect("register")
        .session_id
}

fn request(session_id: &str, title: &str) -> RequestCreateParams {
    RequestCreateParams {
        session_id: session_id.into(),
        title: title.into(),
        question: format!("{title}?"),
        ..RequestCreateParams::default()
    }
}

fn respond(id: &str, text: &str) -> RespondParams {
    RespondParams {
        id: id.into(),
        response_text: text.into(),
        ..RespondParams::default()
    }
}

async fn session_state(client: &Client, session_id: &str) -> SessionState {
    client
        .call::<SessionsHeartbeat>(&SessionRef {
            session_id: session_id.into(),
        })
        .await
        .expect("heartbeat")
        .state
}

/// Waits until a poll of `session_id` is waiting (the hub has no event for that).
async fn wait_polling(harness: &Harness, session_id: &str) {
    let state = Arc::clone(harness.state());
    let session = session_id.to_owned();
    let reached = tokio::time::timeout(DEADLINE, async move {
        while !state.waiters.polling(&session) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "the poll never started waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_woken_by_the_answer_and_redelivers_until_acked() {
    let harness = Harness::start(|_| {}).await;
    let (agent, human) = (harness.client("llm"), harness.gateway());
    let session = register(&agent, "refactor bot").await;
    let request_id = agent
        .call::<RequestsCreate>(&request(&session, "Deploy"))
        .await
        .expect("create")
        .request_id;
    assert!(request_id.starts_with("req_"));
    let created = harness.bus.wait_for("request.created", |_| true).await;
    assert_eq!(created.payload["request_id"], request_id.as_str());
    assert_eq!(created.payload["session_id"], session.as_str());

    let poller = agent.clone();
    let poll_session = session.clone();
    let polling = tokio::spawn(async move {
        poller
            .call::<InboxPoll>(&PollParams {
                session_id: poll_session,
                timeout_ms: 110_000,
            })
            .await
    });
    wait_polling(&harness, &session).await;
    let answered = human
        .call::<RequestsRespond>(&respond(&request_id, "yes, ship it"))
        .await
        .expect("respond");
    assert_eq!(answered.status, RequestStatus::Answered);
    assert_eq!(answered.decided_by.as_deref(), Some("gateway"));

    let polled = tokio::time::timeout(DEADLINE, polling)
        .await
        .expect("the poll returned long before its timeout")
        .expect("task")
        .expect("poll");
    assert_eq!(polled.messages.len(), 1);
    let message = &polled.messages[0];
    assert!(message.message_id.starts_with("msg_"));
    assert_eq!(message.kind, "input_response");
    assert_eq!(
        message.payload,
        json!({"request_id": request_id, "response_text": "yes, ship it"})
    );
    assert_eq!(message.status, MessageStatus::Delivered);
    let event = harness.bus.wait_for("request.answered", |_| true).await;
    assert_eq!(event.payload["response_text"], "yes, ship it");
    assert_eq!(event.trace_id, created.trace_id, "one trace per request");

    // Not acked: every later poll returns it again.
    let poll = PollParams {
        session_id: session.clone(),
        timeout_ms: 0,
    };
    let again = agent.call::<InboxPoll>(&poll).await.expect("poll");
    assert_eq!(again.messages.len(), 1);
    assert_eq!(again.messages[0].message_id, message.message_id);
    let ack = AckParams {
        session_id: session.clone(),
        message_id: message.message_id.clone(),
    };
    assert!(agent.call::<InboxAck>(&ack).await.expect("ack").acked);
    assert!(
        !agent.call::<InboxAck>(&ack).await.expect("second ack").acked,
        "acking twice is fine"
    );
    assert!(agent.call::<InboxPoll>(&poll).await.expect("poll").messages.is_empty());
    let (code, _) = error_of(
        agent
            .call::<InboxAck>(&AckParams {
                session_id: session.clone(),
                message_id: "msg_unknown".into(),
            })
            .await,
    );
    assert_eq!(code, -32002);
    let (code, _) = error_of(
        agent
            .call::<InboxPoll>(&PollParams {
                session_id: "ses_unknown".into(),
                timeout_ms: 0,
            })
            .await,
    );
    assert_eq!(code, -32002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_make_retries_safe() {
    let harness = Harness::start(|_| {}).await;
    let client = harness.gateway();
    let session = register(&client, "bot").await;
    let keyed = RequestCreateParams {
        idempotency_key: Some("k-1".into()),
        ..request(&session, "Merge")
    };
    let first = client.call::<RequestsCreate>(&keyed).await.expect("create").request_id;
    let retry = client.call::<RequestsCreate>(&keyed).await.expect("retry").request_id;
    assert_eq!(first, retry);
    let (code, message) = error_of(
        client
            .call::<RequestsCreate>(&RequestCreateParams {
                question: "something else?".into(),
                ..keyed.clone()
            })
            .await,
    );
    assert_eq!(code, -32003);
    assert!(message.contains("idempotency_key"), "{message}");
    let listed = client
        .call::<RequestsList>(&RequestsListParams::default())
        .await
        .expect("list");
    assert_eq!(listed.requests.len(), 1, "no second request");

    let answer = RespondParams {
        idempotency_key: Some("r-1".into()),
        ..respond(&first, "go")
    };
    let answered = client.call::<RequestsRespond>(&answer).await.expect("respond");
    let retried = client.call::<RequestsRespond>(&answer).await.expect("respond retry");
    assert_eq!(answered, retried);
    let (code, _) = error_of(
        client
            .call::<RequestsRespond>(&RespondParams {
                response_text: "stop".into(),
                ..answer.clone()
            })
            .await,
    );
    assert_eq!(code, -32003);
    let (code, message) = error_of(client.call::<RequestsRespond>(&respond(&first, "go")).await);
    assert_eq!(code, -32003, "not pending and not a retry");
    assert!(message.contains("answered"), "{message}");
    let messages = client
        .call::<InboxPoll>(&PollParams {
            session_id: session.clone(),
            timeout_ms: 0,
        })
        .await
        .expect("poll");
    assert_eq!(messages.messages.len(), 1, "the retry added no second message");
    assert_eq!(harness.bus.on("request.created").len(), 1);
    harness.bus.wait_for("request.answered", |_| true).await;
    assert_eq!(harness.bus.on("request.answered").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_waits_for_input_until_its_last_request_is_resolved() {
    let harness = Harness::start(|_| {}).await;
    let client = harness.gateway();
    let session = register(&client, "bot").await;
    assert_eq!(session_state(&client, &session).await, SessionState::Working);
    let first = client
        .call::<RequestsCreate>(&request(&session, "One"))
        .await
        .expect("create");
    let second = client
        .call::<RequestsCreate>(&request(&session, "Two"))
        .await
        .expect("create");
    assert_eq!(session_state(&client, &session).await, SessionState::WaitingForInput);

    client
        .call::<RequestsRespond>(&respond(&first.request_id, "ok"))
        .await
        .expect("respond");
    let listed = client
        .call::<SessionsList>(&SessionsListParams::default())
        .await
        .expect("list");
    assert_eq!(listed.sessions[0].state, SessionState::WaitingForInput);
    assert_eq!(listed.sessions[0].pending_requests, 1);

    let dismissed = client
        .call::<RequestsDismiss>(&DismissParams {
            id: second.request_id.clone(),
            reason: Some("obsolete".into()),
            ..DismissParams::default()
        })
        .await
        .expect("dismiss");
    assert_eq!(dismissed.status, RequestStatus::Dismissed);
    assert_eq!(session_state(&client, &session).await, SessionState::Working);
    let (code, message) = error_of(
        client
            .call::<RequestsRespond>(&respond(&second.request_id, "late"))
            .await,
    );
    assert_eq!(code, -32003);
    assert!(message.contains("dismissed"), "{message}");
    let event = harness.bus.wait_for("request.dismissed", |_| true).await;
    assert_eq!(event.payload["reason"], "obsolete");
    let messages = client
        .call::<InboxPoll>(&PollParams {
            session_id: session.clone(),
            timeout_ms: 0,
        })
        .await
        .expect("poll");
    let kinds: Vec<_> = messages.messages.iter().map(|message| message.kind.as_str()).collect();
    assert_eq!(kinds, ["input_response", "request_dismissed"]);

    // State set by the session; waiting_for_input cannot be set by hand.
    let done = client
        .call::<SessionsSetState>(&SetStateParams {
            session_id: session.clone(),
            state: SessionState::Done,
        })
        .await
        .expect("set_state");
    assert_eq!(done.state, SessionState::Done);
    let (code, message) = error_of(
        client
            .call::<SessionsSetState>(&SetStateParams {
                session_id: session.clone(),
                state: SessionState::WaitingForInput,
            })
            .await,
    );
    assert_eq!(code, -32602);
    assert!(message.contains("state"), "{message}");
    let (code, _) = error_of(client.call::<RequestsCreate>(&request("ses_unknown", "x")).await);
    assert_eq!(code, -32002);
    let (code, _) = error_of(
        client
            .call::<RequestsGet>(&IdParams {
                id: "req_unknown".into(),
            })
            .await,
    );
    assert_eq!(code, -32002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_survives_a_restart_and_silence_makes_a_session_offline() {
    let mut harness = Harness::start(|_| {}).await;
    let client = harness.gateway();
    let session = register(&client, "bot").await;
    let created = client
        .call::<RequestsCreate>(&request(&session, "Keep"))
        .await
        .expect("create");
    client
        .call::<RequestsRespond>(&respond(&created.request_id, "kept"))
        .await
        .expect("respond");
    let pending = client
        .call::<RequestsCreate>(&request(&session, "Later"))
        .await
        .expect("create");
    harness.stop_policy().await;

    // Back with the same file, and with silence counting from any moment.
    harness.settings.offline_after = Duration::ZERO;
    harness.start_policy().await;
    let client = harness.gateway();
    let answered = client
        .call::<RequestsGet>(&IdParams {
            id: created.request_id.clone(),
        })
        .await
        .expect("get");
    assert_eq!(answered.response_text.as_deref(), Some("kept"));
    let still = client
        .call::<RequestsGet>(&IdParams {
            id: pending.request_id.clone(),
        })
        .await
        .expect("get");
    assert_eq!(still.status, RequestStatus::Pending);
    let listed = client
        .call::<SessionsList>(&SessionsListParams::default())
        .await
        .expect("list");
    assert_eq!(listed.sessions.len(), 1);
    assert_eq!(listed.sessions[0].state, SessionState::Offline);
    assert_eq!(listed.sessions[0].pending_requests, 1);
    let offline = client
        .call::<SessionsList>(&SessionsListParams {
            state: Some(SessionState::Offline),
        })
        .await
        .expect("list");
    assert_eq!(offline.sessions.len(), 1);

    // A session waiting in a poll is not silent.
    let poller = client.clone();
    let poll_session = session.clone();
    let polling = tokio::spawn(async move {
        poller
            .call::<InboxPoll>(&PollParams {
                session_id: poll_session,
                timeout_ms: 60_000,
            })
            .await
    });
    // The answer from before the restart is still there, unacked: the poll returns it at once.
    let polled = tokio::time::timeout(DEADLINE, polling)
        .await
        .expect("poll")
        .expect("task")
        .expect("poll");
    assert_eq!(polled.messages.len(), 1);
    assert_eq!(polled.messages[0].payload["response_text"], "kept");
    client
        .call::<InboxAck>(&AckParams {
            session_id: session.clone(),
            message_id: polled.messages[0].message_id.clone(),
        })
        .await
        .expect("ack");
    let poller = client.clone();
    let poll_session = session.clone();
    let waiting = tokio::spawn(async move {
        poller
            .call::<InboxPoll>(&PollParams {
                session_id: poll_session,
                timeout_ms: 60_000,
            })
            .await
    });
    wait_polling(&harness, &session).await;
    let listed = client
        .call::<SessionsList>(&SessionsListParams::default())
        .await
        .expect("list");
    assert_eq!(listed.sessions[0].state, SessionState::WaitingForInput);
    client
        .call::<RequestsDismiss>(&DismissParams {
            id: pending.request_id.clone(),
            ..DismissParams::default()
        })
        .await
        .expect("dismiss");
    let woke = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("poll")
        .expect("task")
        .expect("poll");
    assert_eq!(woke.messages[0].kind, "request_dismissed");

    // With the default silence allowance the same session is live again after a heartbeat.
    harness.stop_policy().await;
    harness.settings.offline_after = Duration::from_secs(120);
    harness.start_policy().await;
    assert_eq!(session_state(&harness.gateway(), &session).await, SessionState::Working);
    let health = harness.gateway().call::<Health>(&NoParams {}).await.expect("health");
    assert_eq!(health.details["sessions"], 1);
    assert_eq!(health.details["pending_requests"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_callers_get_nothing() {
    let harness = Harness::start(|_| {}).await;
    let stranger = Client::new(Endpoint::public(harness.path("run/policy.sock")));
    let (code, _) = error_of(stranger.call::<Health>(&NoParams {}).await);
    assert_eq!(code, -32001);
}
