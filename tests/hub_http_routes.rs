//! The hub's HTTP routes called directly (`tower::ServiceExt::oneshot`), with
//! no socket in between: who may do what, the shape of every 4xx, paging.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use caps::hub::{Admission, EventLog, Hub, HubConfig};
use caps::protocol::{RoleName, StoreId};
use caps::token::{self, Claims, Secret};
use serde_json::{Value, json};
use tower::ServiceExt;

/// An ephemeral hub's routes, with its sequencer running.
fn routes(admission: Admission) -> Router {
    let config = HubConfig {
        admission,
        ..HubConfig::ephemeral()
    };
    let hub = Hub::open(config).unwrap();
    hub.start(EventLog::to_writer(std::io::sink()))
        .unwrap()
        .router()
}

async fn call(
    routes: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(json) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let response = routes
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

/// The body of `GET uri`, as text.
async fn text(routes: &Router, uri: &str) -> String {
    let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let response = routes.clone().oneshot(request).await.unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn order(store: &str, id: &str) -> Value {
    json!({"store": store, "orderId": id, "customer": "Jamal Braun", "address": "Schmittfurt, LA"})
}

/// Asserts the documented error shape and returns its code.
fn error_code(body: &Value) -> &str {
    assert_eq!(body["ok"], json!(false), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    body["error"]["code"].as_str().unwrap()
}

#[tokio::test]
async fn orders_are_placed_tracked_and_paged_by_cursor() {
    let routes = routes(Admission::Open);
    for id in ["o1", "o2", "o3"] {
        let (status, body) = call(
            &routes,
            "POST",
            "/api/orders",
            None,
            Some(order("acme", id)),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["orderId"], id);
    }
    let (status, body) = call(&routes, "GET", "/api/orders/o2", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "ready");
    assert_eq!(body["history"][0]["state"], "ready");

    let (_, first) = call(&routes, "GET", "/api/orders?limit=2", None, None).await;
    let ids: Vec<&str> = first["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["orderId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["o1", "o2"]);
    let next = first["next"].as_u64().expect("a cursor to the next page");
    let (_, second) = call(
        &routes,
        "GET",
        &format!("/api/orders?limit=2&after={next}"),
        None,
        None,
    )
    .await;
    assert_eq!(second["orders"][0]["orderId"], "o3");
    assert!(
        second.get("next").is_none(),
        "the last page has no cursor: {second}"
    );
}

#[tokio::test]
async fn bad_requests_get_the_error_shape_and_a_4xx() {
    let routes = routes(Admission::Open);
    let cases = [
        (
            "POST",
            "/api/orders",
            Some(json!({"store": "acme"})),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "POST",
            "/api/orders",
            Some(json!([1, 2])),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "GET",
            "/api/orders?state=lost",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "GET",
            "/api/orders?limit=-1",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "GET",
            "/api/orders/nobody",
            None,
            StatusCode::NOT_FOUND,
            "unknown_order",
        ),
        (
            "GET",
            "/no/such/path",
            None,
            StatusCode::NOT_FOUND,
            "invalid_payload",
        ),
    ];
    for (method, uri, body, status, code) in cases {
        let (got, body) = call(&routes, method, uri, None, body).await;
        assert_eq!(got, status, "{method} {uri}: {body}");
        assert_eq!(error_code(&body), code, "{method} {uri}");
    }
    call(
        &routes,
        "POST",
        "/api/orders",
        None,
        Some(order("acme", "o1")),
    )
    .await;
    let mut changed = order("acme", "o1");
    changed["customer"] = json!("Someone Else");
    let (status, body) = call(&routes, "POST", "/api/orders", None, Some(changed)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "order_conflict");
}

#[tokio::test]
async fn with_a_secret_each_token_reads_and_writes_only_what_it_may() {
    let secret = Secret::new(b"a test secret that is long enough!!".to_vec()).unwrap();
    let now = chrono::Utc::now().timestamp();
    let mint = |role: RoleName, store: Option<&str>| {
        token::mint(
            &secret,
            &Claims {
                role,
                store: store.map(|s| StoreId::new(s).unwrap()),
                name: None,
                iat: now,
                exp: now + 60,
            },
        )
    };
    let acme = mint(RoleName::Vendor, Some("acme"));
    let viewer = mint(RoleName::Viewer, None);
    let operator = mint(RoleName::Operator, None);
    let routes = routes(Admission::Tokens(secret.clone()));

    let (status, body) = call(&routes, "GET", "/api/status", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "unauthorized");
    let (status, body) = call(
        &routes,
        "GET",
        "/api/status",
        Some("forged.token.here"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let (status, _) = call(
        &routes,
        "POST",
        "/api/orders",
        Some(&acme),
        Some(order("acme", "a1")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = call(
        &routes,
        "POST",
        "/api/orders",
        Some(&acme),
        Some(order("globex", "g1")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), "forbidden");
    let (status, body) = call(
        &routes,
        "GET",
        "/api/orders?store=globex",
        Some(&acme),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = call(&routes, "GET", "/api/orders/a1", Some(&acme), None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a vendor reads its own order: {body}"
    );
    let (status, body) = call(
        &routes,
        "POST",
        "/api/orders",
        Some(&viewer),
        Some(order("acme", "v1")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a viewer only reads: {body}");
    let (status, body) = call(&routes, "GET", "/api/status", Some(&viewer), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["orders"]["ready"], 1,
        "only the vendor's own order was placed"
    );

    // Only an operator hands a driver's packages back.
    let reclaim = "/api/drivers/bob/reclaim";
    for token in [&acme, &viewer] {
        let (status, body) = call(&routes, "POST", reclaim, Some(token), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(error_code(&body), "forbidden");
    }
    let (status, body) = call(&routes, "POST", reclaim, Some(&operator), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"driver": "bob", "reclaimed": 0}));
    let (status, _) = call(&routes, "GET", "/api/status", Some(&operator), None).await;
    assert_eq!(status, StatusCode::OK, "an operator reads too");
}

/// The lifecycle table reaches every door that lists states: the board has
/// a column per state, the status counts and the metrics name each one, and
/// a bad `?state=` is told every name.
#[tokio::test]
async fn every_order_state_has_its_column_count_label_and_name() {
    use caps::protocol::OrderState;

    let routes = routes(Admission::Open);
    let page = text(&routes, "/").await;
    let (_, status) = call(&routes, "GET", "/api/status", None, None).await;
    let metrics = text(&routes, "/metrics").await;
    let (_, refused) = call(&routes, "GET", "/api/orders?state=lost", None, None).await;
    let message = refused["error"]["message"].as_str().unwrap();
    for state in OrderState::ALL {
        let name = state.name();
        assert!(
            page.contains(&format!(
                "data-state=\"{name}\" data-final=\"{}\"",
                state.is_final()
            )),
            "no column for {name}"
        );
        assert!(page.contains(&format!("id=\"list-{name}\"")), "{name}");
        assert_eq!(status["orders"][name], json!(0), "{status}");
        assert!(
            metrics.contains(&format!("state=\"{name}\"")),
            "no metric for {name}"
        );
        assert!(message.contains(name), "{message}");
    }
    assert_eq!(
        status["orders"].as_object().unwrap().len(),
        OrderState::COUNT
    );
}
