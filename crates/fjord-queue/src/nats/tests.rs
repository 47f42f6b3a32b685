//! Unit tests of the NATS queue's codecs and mirror (no server needed; tests/nats.rs has
//! those against a real one).

use super::codec::{
    Envelope, decode_function, decode_message, encode_function, encode_message, key_of,
};
use super::mirror::{Active, Mirror};
use crate::CallState;

#[test]
fn function_names_round_trip_and_stay_distinct() {
    for f in ["echo.openfaas-fn", "a", "f", "x_y.z", "Ü.ns", "a=41", ""] {
        let token = encode_function(f);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)),
            "{token}"
        );
        assert_eq!(decode_function(&token).as_deref(), Some(f));
    }
    assert_eq!(encode_function("echo.openfaas-fn"), "echo_openfaas-fn");
    assert_ne!(encode_function("a_b"), encode_function("a.b"));
}

#[test]
fn keys_are_safe_and_distinct() {
    assert_eq!(key_of("3f2a-uuid_1"), "3f2a-uuid_1");
    for id in ["a.b", "a b", "", "=x", "ä", "a/b", "*", ">"] {
        let key = key_of(id);
        assert!(key.starts_with('='), "{id}: {key}");
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b))
        );
    }
    assert_ne!(key_of("=x"), key_of("x"));
}

#[test]
fn messages_round_trip() {
    let envelope = Envelope {
        id: "c1".into(),
        function: "f.ns".into(),
        created_at_ms: 7,
        method: "POST".into(),
        path: "/a\nb".into(),
        query: Some("x=1".into()),
        headers: vec![("x-a".into(), "line\nbreak".into())],
        callback_url: None,
        kid: None,
        mac: None,
    };
    let body = b"\n\0binary\n\xff";
    let payload = encode_message(&envelope, body).unwrap();
    let (back, got) = decode_message(&payload).unwrap();
    assert_eq!(&got[..], body);
    assert_eq!(back.path, "/a\nb");
    assert_eq!(back.headers, envelope.headers);
    assert!(decode_message(&bytes::Bytes::from_static(b"{}")).is_err());
    assert!(decode_message(&bytes::Bytes::from_static(b"nope\nbody")).is_err());
}

#[test]
fn mirror_ignores_older_events() {
    let mut m = Mirror::default();
    let active = |state, due_ms| {
        Some(Active {
            function: "f".into(),
            state,
            due_ms,
            since_ms: 0,
        })
    };
    m.apply("k", 1, active(CallState::Queued, 10), true);
    // A local write finishes the call ahead of the watch.
    m.apply("k", 3, None, false);
    assert_eq!(m.depth_of("f"), 0);
    // The watch then delivers the older running state: ignored.
    m.apply("k", 2, active(CallState::Running, 99), true);
    assert_eq!(m.depth_of("f"), 0);
    m.apply("k", 3, None, true);
    assert!(m.calls.is_empty() && m.tombstones.is_empty());
    m.apply("j", 4, active(CallState::Retrying, 50), false);
    assert!(m.due(49).next().is_none());
    assert_eq!(m.due(50).collect::<Vec<_>>(), ["f"]);
    assert_eq!(m.retries_just_due("f", 60), 1);
    assert_eq!(m.retries_just_due("f", 49), 0);
}
