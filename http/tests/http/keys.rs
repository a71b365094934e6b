//! What a key is and whose it is: missing, malformed and reused keys, scopes, and the requests
//! the layer leaves alone.

use http::{Method, StatusCode, header};

use crate::StoreKind;
use crate::server::start;

per_store!(
    first_response_is_replayed_byte_for_byte_without_set_cookie,
    missing_key_passes_through_by_default,
    missing_key_gets_400_when_required,
    empty_key_gets_400,
    key_over_255_characters_gets_400,
    key_not_visible_ascii_gets_400,
    key_sent_twice_gets_400,
    a_quoted_key_and_its_bare_form_are_one_key,
    a_malformed_quoted_key_gets_400,
    problem_types_start_with_the_configured_base,
    same_key_other_body_gets_422,
    same_key_other_path_gets_422,
    same_key_other_fingerprint_header_gets_422,
    get_passes_through_untouched,
    two_principals_with_one_key_never_see_each_others_response,
    key_header_reaches_the_upstream_unchanged,
    a_re_serialised_body_is_the_same_request,
    a_body_field_left_out_of_the_fingerprint_does_not_make_another_request,
    a_key_from_the_body_dedupes_requests_that_send_no_header,
);

async fn first_response_is_replayed_byte_for_byte_without_set_cookie(kind: StoreKind) {
    let server = start(kind, |l| l).await;
    let first = server.post("/charges", "k-1", r#"{"amount":10}"#).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    assert!(first.headers.contains_key(header::SET_COOKIE));

    for _ in 0..3 {
        let again = server.post("/charges", "k-1", r#"{"amount":10}"#).await;
        assert!(again.replayed(), "{again:?}");
        assert_eq!(again.status, first.status);
        assert_eq!(again.body, first.body);
        assert_eq!(
            again.headers.get("x-execution"),
            first.headers.get("x-execution")
        );
        assert_eq!(
            again.headers.get(header::CONTENT_TYPE),
            first.headers.get(header::CONTENT_TYPE)
        );
        assert!(!again.headers.contains_key(header::SET_COOKIE));
    }
    assert_eq!(server.upstream.calls("/charges", "k-1"), 1);
}

async fn missing_key_passes_through_by_default(kind: StoreKind) {
    let server = start(kind, |l| l).await;
    for _ in 0..2 {
        let reply = server.send(Method::POST, "/charges", &[], "{}").await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert!(!reply.replayed());
    }
    assert_eq!(server.upstream.total(), 2);
}

async fn missing_key_gets_400_when_required(kind: StoreKind) {
    let server = start(kind, |l| l.require_key(true)).await;
    let reply = server.send(Method::POST, "/charges", &[], "{}").await;
    assert_eq!(
        reply.problem(StatusCode::BAD_REQUEST),
        "urn:oncely:http:idempotency-key-missing"
    );
    assert_eq!(server.upstream.total(), 0);
}

async fn malformed(kind: StoreKind, headers: &[(&str, &[u8])]) {
    let server = start(kind, |l| l).await;
    let reply = server.send(Method::POST, "/charges", headers, "{}").await;
    assert_eq!(
        reply.problem(StatusCode::BAD_REQUEST),
        "urn:oncely:http:idempotency-key-malformed"
    );
    assert_eq!(server.upstream.total(), 0);
}

async fn empty_key_gets_400(kind: StoreKind) {
    malformed(kind, &[("idempotency-key", b"")]).await;
}

async fn key_over_255_characters_gets_400(kind: StoreKind) {
    malformed(kind, &[("idempotency-key", "k".repeat(256).as_bytes())]).await;
    // 255 is fine.
    let server = start(kind, |l| l).await;
    let reply = server.post("/charges", &"k".repeat(255), "{}").await;
    assert_eq!(reply.status, StatusCode::CREATED);
}

async fn key_not_visible_ascii_gets_400(kind: StoreKind) {
    malformed(kind, &[("idempotency-key", "clé-1".as_bytes())]).await;
    malformed(kind, &[("idempotency-key", b"a\tb")]).await;
    malformed(kind, &[("idempotency-key", b"order 7")]).await;
}

async fn key_sent_twice_gets_400(kind: StoreKind) {
    malformed(
        kind,
        &[("idempotency-key", b"k-1"), ("idempotency-key", b"k-1")],
    )
    .await;
}

async fn a_quoted_key_and_its_bare_form_are_one_key(kind: StoreKind) {
    let server = start(kind, |l| l).await;
    // As the IETF draft sends it (an RFC 8941 string), then as most clients do.
    let quoted = server.post("/charges", "\"k-1\"", "{}").await;
    assert_eq!(quoted.status, StatusCode::CREATED);
    assert!(!quoted.replayed());
    let bare = server.post("/charges", "k-1", "{}").await;
    assert!(bare.replayed());
    assert_eq!(bare.body, quoted.body);
    assert_eq!(server.upstream.total(), 1);
}

async fn a_malformed_quoted_key_gets_400(kind: StoreKind) {
    malformed(kind, &[("idempotency-key", b"\"k-1")]).await;
    malformed(kind, &[("idempotency-key", b"\"k\\-1\"")]).await;
}

async fn same_key_other_body_gets_422(kind: StoreKind) {
    let server = start(kind, |l| l).await;
    assert_eq!(
        server
            .post("/charges", "k-1", r#"{"amount":10}"#)
            .await
            .status,
        StatusCode::CREATED
    );
    let reply = server.post("/charges", "k-1", r#"{"amount":99}"#).await;
    assert_eq!(
        reply.problem(StatusCode::UNPROCESSABLE_ENTITY),
        "urn:oncely:http:idempotency-key-reused"
    );
    assert_eq!(server.upstream.total(), 1);
}

async fn same_key_other_path_gets_422(kind: StoreKind) {
    let server = start(kind, |l| l).await;
    assert_eq!(
        server.post("/charges", "k-1", "{}").await.status,
        StatusCode::CREATED
    );
    let reply = server.post("/refunds", "k-1", "{}").await;
    reply.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(server.upstream.calls("/refunds", "k-1"), 0);
}

async fn same_key_other_fingerprint_header_gets_422(kind: StoreKind) {
    let server = start(kind, |l| {
        l.fingerprint_headers([http::HeaderName::from_static("x-tenant")])
    })
    .await;
    let as_tenant = |tenant: &'static str| {
        let server = &server;
        async move {
            server
                .send(
                    Method::POST,
                    "/charges",
                    &[("idempotency-key", b"k-1"), ("x-tenant", tenant.as_bytes())],
                    "{}",
                )
                .await
        }
    };
    assert_eq!(as_tenant("t1").await.status, StatusCode::CREATED);
    assert!(as_tenant("t1").await.replayed());
    as_tenant("t2")
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(server.upstream.total(), 1);
}

async fn get_passes_through_untouched(kind: StoreKind) {
    let server = start(kind, |l| l.require_key(true)).await;
    for _ in 0..2 {
        let reply = server
            .send(Method::GET, "/charges", &[("idempotency-key", b"k-1")], "")
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(!reply.replayed());
    }
    // No key needed either, even with require_key.
    assert_eq!(
        server.send(Method::GET, "/charges", &[], "").await.status,
        StatusCode::OK
    );
    assert_eq!(server.upstream.calls("/charges GET", "k-1"), 2);
}

async fn two_principals_with_one_key_never_see_each_others_response(kind: StoreKind) {
    let server = start(kind, |l| l.principal_headers([header::AUTHORIZATION])).await;
    let as_user = |token: &'static str| {
        let server = &server;
        async move {
            server
                .send(
                    Method::POST,
                    "/charges",
                    &[
                        ("idempotency-key", b"k-1"),
                        ("authorization", token.as_bytes()),
                    ],
                    "{}",
                )
                .await
        }
    };
    let alice = as_user("Bearer alice").await;
    let bob = as_user("Bearer bob").await;
    assert!(!alice.replayed() && !bob.replayed());
    assert_ne!(alice.body, bob.body);
    assert_eq!(as_user("Bearer alice").await.body, alice.body);
    assert_eq!(as_user("Bearer bob").await.body, bob.body);
    assert_eq!(server.upstream.calls("/charges", "k-1"), 2);
}

async fn key_header_reaches_the_upstream_unchanged(kind: StoreKind) {
    let server = start(kind, |l| l).await;
    let key = "Key-With.Mixed_CASE~and:punctuation/8e03978e";
    let reply = server.post("/charges", key, "{}").await;
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(json["key"], key);
}

async fn problem_types_start_with_the_configured_base(kind: StoreKind) {
    let server = start(kind, |l| {
        l.problem_type_base("https://docs.example.com/errors/")
    })
    .await;
    let reply = server
        .send(Method::POST, "/charges", &[("idempotency-key", b"")], "{}")
        .await;
    assert_eq!(
        reply.problem(StatusCode::BAD_REQUEST),
        "https://docs.example.com/errors/idempotency-key-malformed"
    );
}

async fn a_re_serialised_body_is_the_same_request(kind: StoreKind) {
    let server = start(kind, |l| l).await;
    let first = server
        .post("/charges", "k-1", r#"{"amount":10,"to":"ann"}"#)
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = server
        .post("/charges", "k-1", r#"{ "to": "ann", "amount": 10 }"#)
        .await;
    assert!(again.replayed(), "{again:?}");
    assert_eq!(again.body, first.body);
    assert_eq!(server.upstream.total(), 1);
}

async fn a_body_field_left_out_of_the_fingerprint_does_not_make_another_request(kind: StoreKind) {
    let server = start(kind, |l| {
        l.body_fingerprint("ignore:/sentAt".parse().unwrap())
    })
    .await;
    let first = server
        .post("/charges", "k-1", r#"{"amount":10,"sentAt":"12:00:00"}"#)
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = server
        .post("/charges", "k-1", r#"{"amount":10,"sentAt":"12:00:05"}"#)
        .await;
    assert!(again.replayed(), "{again:?}");
    let other = server
        .post("/charges", "k-1", r#"{"amount":11,"sentAt":"12:00:09"}"#)
        .await;
    assert_eq!(
        other.problem(StatusCode::UNPROCESSABLE_ENTITY),
        "urn:oncely:http:idempotency-key-reused"
    );
    assert_eq!(server.upstream.total(), 1);
}

async fn a_key_from_the_body_dedupes_requests_that_send_no_header(kind: StoreKind) {
    let server = start(kind, |l| l.key_from_body("orderId".parse().unwrap())).await;
    let post = |body: &'static str| server.send(Method::POST, "/charges", &[], body);
    let first = post(r#"{"orderId":"o-1","amount":10}"#).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = post(r#"{"amount": 10, "orderId": "o-1"}"#).await;
    assert!(again.replayed(), "{again:?}");
    assert_eq!(again.body, first.body);
    let other = post(r#"{"orderId":"o-1","amount":99}"#).await;
    assert_eq!(
        other.problem(StatusCode::UNPROCESSABLE_ENTITY),
        "urn:oncely:http:idempotency-key-reused"
    );
    assert_eq!(server.upstream.total(), 1);
    // A header still wins, its key apart from the bodies' (the same text, not the same key);
    // a body without the key passes through, each time.
    let keyed = server
        .post("/charges", "o-1", r#"{"orderId":"o-1","amount":10}"#)
        .await;
    assert!(!keyed.replayed(), "{keyed:?}");
    for _ in 0..2 {
        assert!(!post(r#"{"amount":10}"#).await.replayed());
    }
    assert!(!post("not json").await.replayed());
    assert_eq!(server.upstream.total(), 5);

    let required = start(kind, |l| {
        l.key_from_body("orderId".parse().unwrap())
            .require_key(true)
    })
    .await;
    let reply = required
        .send(Method::POST, "/charges", &[], r#"{"amount":10}"#)
        .await;
    assert_eq!(
        reply.problem(StatusCode::BAD_REQUEST),
        "urn:oncely:http:idempotency-key-missing"
    );
    assert!(reply.text().contains("selects nothing"), "{}", reply.text());
    assert_eq!(required.upstream.total(), 0);
}
