//! Criterion micro benchmarks of the hot paths: token verification, topic pattern matching, line
//! framing and request handling, and our dispatch compared with jsonrpsee's `RpcModule`.

use std::hint::black_box;

use aiventbus_proto::TopicPattern;
use aiventbus_proto::jsonrpc::{Request, encode_result};
use aiventbus_proto::methods::IdParams;
use aiventbus_rpc::codec::LineCodec;
use aiventbus_rpc::error::parse_params;
use aiventbus_rpc::token::{Key, Minter, Verifier, attenuate};
use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use tokio_util::codec::Decoder;

const NOW: u64 = 1_800_000_000_000;

fn tokens(c: &mut Criterion) {
    let master = Key::generate().expect("random key");
    let key = master.audience_key("bus");
    let minter = Minter::new("bus", &key);
    let verifier = Verifier::new("bus", &key);
    let token = minter.mint(
        "gateway",
        &["events.*", "topics.list", "system.health"],
        NOW + 3_600_000,
    );
    let narrowed = attenuate(&token, "scope=events.get").expect("attenuate");
    c.bench_function("token/verify", |b| {
        b.iter(|| verifier.verify(black_box(&token), NOW).expect("valid"))
    });
    c.bench_function("token/verify_attenuated", |b| {
        b.iter(|| verifier.verify(black_box(&narrowed), NOW).expect("valid"))
    });
    c.bench_function("token/mint", |b| b.iter(|| minter.mint("gateway", &["events.*"], NOW)));
}

fn patterns(c: &mut Criterion) {
    let cases = [
        ("fs.**", "fs.created.home.user"),
        ("a.**.z", "a.b.c.d.e.z"),
        ("user.*", "user.query"),
        ("**", "anything.at.all"),
    ];
    let compiled: Vec<(TopicPattern, &str)> = cases
        .iter()
        .map(|(p, t)| (TopicPattern::parse(p).expect("pattern"), *t))
        .collect();
    c.bench_function("pattern/match_4", |b| {
        b.iter(|| {
            compiled
                .iter()
                .filter(|(pattern, topic)| pattern.matches(black_box(topic)))
                .count()
        })
    });
    c.bench_function("pattern/parse", |b| {
        b.iter(|| TopicPattern::parse(black_box("a.**.b.*.c")))
    });
}

fn framing(c: &mut Criterion) {
    let line = r#"{"jsonrpc":"2.0","id":42,"method":"events.publish","params":{"topic":"bench.load","payload":{"n":1,"text":"hello world"}}}"#;
    let mut input = String::new();
    for _ in 0..100 {
        input.push_str(line);
        input.push('\n');
    }
    c.bench_function("frame/decode_100_lines", |b| {
        b.iter(|| {
            let mut codec = LineCodec::new(1 << 20);
            let mut buf = BytesMut::from(input.as_bytes());
            let mut n = 0;
            while let Some(frame) = codec.decode(&mut buf).expect("frame") {
                n += frame.len();
            }
            n
        })
    });
    c.bench_function("frame/parse_request", |b| {
        b.iter(|| serde_json::from_str::<Request>(black_box(line)).expect("request"))
    });
    let id = serde_json::value::RawValue::from_string("42".into()).expect("raw");
    let result = serde_json::value::RawValue::from_string(
        r#"{"id":"evt_01JD0000000000000000000000","seq":1,"trace_id":"tr_01JD0000000000000000000000","status":"published"}"#
            .into(),
    )
    .expect("raw");
    c.bench_function("frame/encode_result", |b| {
        b.iter(|| encode_result(&id, black_box(&result)))
    });
}

/// The same call — parse the request, parse `{id}` params, build a small result, encode the reply —
/// through our path and through jsonrpsee's `RpcModule::raw_json_request`.
fn dispatch(c: &mut Criterion) {
    let line = r#"{"jsonrpc":"2.0","id":7,"method":"events.get","params":{"id":"evt_01JD0000000000000000000000"}}"#;
    c.bench_function("dispatch/ours", |b| {
        b.iter(|| {
            let request: Request = serde_json::from_str(black_box(line)).expect("request");
            let params: IdParams = parse_params(request.params.as_deref()).expect("params");
            let result = serde_json::value::to_raw_value(&serde_json::json!({ "id": params.id })).expect("result");
            encode_result(request.id.as_deref().expect("id"), &result)
        })
    });
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut module = jsonrpsee::RpcModule::new(());
    module
        .register_method("events.get", |params, _, _| {
            let params: IdParams = params.parse()?;
            jsonrpsee::core::RpcResult::Ok(serde_json::json!({ "id": params.id }))
        })
        .expect("register");
    c.bench_function("dispatch/jsonrpsee_rpc_module", |b| {
        b.iter(|| {
            runtime
                .block_on(module.raw_json_request(black_box(line), 1))
                .expect("call")
        })
    });
}

criterion_group!(benches, tokens, patterns, framing, dispatch);
criterion_main!(benches);
