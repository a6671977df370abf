//! The desk's rules, one behaviour per test.

use super::*;
use crate::protocol::{Address, Customer, DriverName, OrderId, StoreId};

type TestDesk = Desk<u32>;

fn desk() -> TestDesk {
    Desk::new(DeskConfig {
        offer_timeout: Duration::from_secs(10),
        reclaim_after: Some(Duration::from_secs(60)),
        keep_delivered: 100,
    })
}

fn order(id: &str) -> Order {
    Order {
        store: StoreId::new("acme").unwrap(),
        order_id: OrderId::new(id).unwrap(),
        customer: Customer::new("Jamal Braun").unwrap(),
        address: Address::new("Schmittfurt, LA").unwrap(),
    }
}

fn named(name: &str) -> DriverKey {
    DriverKey::Named(DriverName::new(name).unwrap())
}

/// (driver, order id) of every offer among `effects`.
fn offers(effects: &[Effect<u32>]) -> Vec<(String, String)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Offer { driver, order, .. } => {
                Some((driver.to_string(), order.order_id.to_string()))
            }
            Effect::Notify { .. } | Effect::Notice { .. } => None,
        })
        .collect()
}

fn pickup(desk: &mut TestDesk, id: &str, now: Instant) -> Vec<Effect<u32>> {
    let (outcome, effects) = desk.pickup(order(id), now).unwrap();
    assert_eq!(outcome, PickupOutcome::Accepted);
    effects
}

#[test]
fn each_order_goes_to_exactly_one_driver_least_loaded_then_round_robin() {
    let now = Instant::now();
    let mut desk = desk();
    for (n, name) in ["a", "b", "c"].into_iter().enumerate() {
        assert!(
            desk.driver_online(named(name), n as u32, None, now)
                .is_empty()
        );
    }
    let mut given = Vec::new();
    for n in 0..6 {
        given.extend(offers(&pickup(&mut desk, &format!("o{n}"), now)));
    }
    assert_eq!(given.len(), 6, "one offer per order");
    let per_driver = |name: &str| given.iter().filter(|(d, _)| d == name).count();
    assert_eq!(
        (per_driver("a"), per_driver("b"), per_driver("c")),
        (2, 2, 2)
    );
    assert_ne!(given[0].0, given[1].0, "ties rotate");
}

#[test]
fn pickups_wait_until_a_driver_connects_and_go_oldest_first() {
    let now = Instant::now();
    let mut desk = desk();
    for n in 0..3 {
        assert!(pickup(&mut desk, &format!("o{n}"), now).is_empty());
    }
    assert_eq!(desk.counts().get(OrderState::Ready), 3);
    let effects = desk.driver_online(named("a"), 1, Some(2), now);
    let ids: Vec<String> = offers(&effects).into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, ["o0", "o1"], "oldest first, up to capacity");
    assert_eq!(desk.counts().get(OrderState::Ready), 1);
}

#[test]
fn capacity_is_never_exceeded() {
    let now = Instant::now();
    let mut desk = desk();
    desk.driver_online(named("a"), 1, Some(2), now);
    for n in 0..5 {
        pickup(&mut desk, &format!("o{n}"), now);
    }
    let status = desk.drivers();
    assert_eq!((status[0].load, status[0].peak_load), (2, 2));
    let key = |id: &str| OrderKey::of(&order(id));
    desk.in_transit(&named("a"), &key("o0")).unwrap();
    let effects = desk.delivered(&named("a"), &key("o0"), now).unwrap();
    assert_eq!(
        offers(&effects),
        [("a".to_string(), "o2".to_string())],
        "room made, next order offered"
    );
    assert_eq!(desk.drivers()[0].peak_load, 2);
}

#[test]
fn the_lifecycle_moves_only_forward_and_only_for_the_assigned_driver() {
    let now = Instant::now();
    let mut desk = desk();
    desk.driver_online(named("a"), 1, None, now);
    desk.driver_online(named("b"), 2, None, now);
    let given = offers(&pickup(&mut desk, "o1", now));
    let holder = named(&given[0].0);
    let other = if given[0].0 == "a" {
        named("b")
    } else {
        named("a")
    };
    let key = OrderKey::of(&order("o1"));

    let refused = |result: Result<Vec<Effect<u32>>, Refusal>| result.unwrap_err().code;
    assert_eq!(
        refused(desk.delivered(&holder, &key, now)),
        ErrorCode::OutOfOrder
    );
    assert_eq!(
        refused(desk.in_transit(&other, &key)),
        ErrorCode::NotAssigned
    );
    let missing = OrderKey::of(&order("nope"));
    assert_eq!(
        refused(desk.in_transit(&holder, &missing)),
        ErrorCode::UnknownOrder
    );
    assert_eq!(
        desk.state_of(&key),
        Some(OrderState::Assigned),
        "refusals change nothing"
    );

    let effects = desk.in_transit(&holder, &key).unwrap();
    assert!(matches!(
        &effects[..],
        [Effect::Notify {
            event: Event::InTransit,
            ..
        }]
    ));
    assert!(
        desk.in_transit(&holder, &key).unwrap().is_empty(),
        "a repeat is not relayed"
    );
    assert_eq!(
        refused(desk.delivered(&other, &key, now)),
        ErrorCode::NotAssigned
    );
    let effects = desk.delivered(&holder, &key, now).unwrap();
    assert!(matches!(
        &effects[..],
        [Effect::Notice {
            kind: Event::Delivered,
            ..
        }]
    ));
    assert!(desk.delivered(&holder, &key, now).unwrap().is_empty());
    assert_eq!(desk.state_of(&key), Some(OrderState::Delivered));
    let states: Vec<OrderState> = desk
        .history_of(&key)
        .unwrap()
        .iter()
        .map(|t| t.state)
        .collect();
    let happy_path = [
        OrderState::Ready,
        OrderState::Assigned,
        OrderState::InTransit,
        OrderState::Delivered,
    ];
    assert_eq!(states, happy_path);
}

#[test]
fn a_repeated_pickup_is_idempotent_and_a_conflicting_one_refused() {
    let now = Instant::now();
    let mut desk = desk();
    desk.driver_online(named("a"), 1, None, now);
    assert_eq!(offers(&pickup(&mut desk, "o1", now)).len(), 1);
    let (outcome, effects) = desk.pickup(order("o1"), now).unwrap();
    assert_eq!(outcome, PickupOutcome::Repeated(OrderState::Assigned));
    assert!(effects.is_empty(), "not dispatched twice");
    let mut changed = order("o1");
    changed.customer = Customer::new("Somebody Else").unwrap();
    assert_eq!(
        desk.pickup(changed, now).unwrap_err().code,
        ErrorCode::OrderConflict
    );
}

#[test]
fn expired_offers_go_to_another_driver() {
    let start = Instant::now();
    let mut desk = desk();
    desk.driver_online(named("a"), 1, None, start);
    desk.driver_online(named("b"), 2, None, start);
    let first = offers(&pickup(&mut desk, "o1", start))[0].0.clone();
    assert!(
        desk.tick(start + Duration::from_secs(5)).is_empty(),
        "not yet"
    );
    let again = offers(&desk.tick(start + Duration::from_secs(10)));
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].0, first, "someone else gets it");
    let key = OrderKey::of(&order("o1"));
    assert_eq!(
        desk.in_transit(&named(&first), &key).unwrap_err().code,
        ErrorCode::NotAssigned,
        "the withdrawn offer cannot be taken up"
    );
}

#[test]
fn a_lone_driver_gets_its_expired_offer_again() {
    let start = Instant::now();
    let mut desk = desk();
    desk.driver_online(named("a"), 1, None, start);
    pickup(&mut desk, "o1", start);
    let again = offers(&desk.tick(start + Duration::from_secs(10)));
    assert_eq!(again, [("a".to_string(), "o1".to_string())]);
}

#[test]
fn a_named_driver_keeps_its_packages_across_a_reconnect_and_is_handed_them_back() {
    let now = Instant::now();
    let mut desk = desk();
    desk.driver_online(named("a"), 1, None, now);
    pickup(&mut desk, "carried", now);
    pickup(&mut desk, "offered", now);
    desk.in_transit(&named("a"), &OrderKey::of(&order("carried")))
        .unwrap();

    assert!(desk.driver_offline(&named("a"), &1, now).is_empty());
    assert_eq!(
        desk.state_of(&OrderKey::of(&order("carried"))),
        Some(OrderState::InTransit)
    );
    assert_eq!(
        desk.state_of(&OrderKey::of(&order("offered"))),
        Some(OrderState::Ready)
    );

    let back = offers(&desk.driver_online(named("a"), 7, None, now));
    assert_eq!(
        back,
        [
            ("a".to_string(), "carried".to_string()),
            ("a".to_string(), "offered".to_string())
        ]
    );
    desk.delivered(&named("a"), &OrderKey::of(&order("carried")), now)
        .unwrap();
}

#[test]
fn a_stale_disconnect_does_not_unseat_the_new_connection() {
    let now = Instant::now();
    let mut desk = desk();
    desk.driver_online(named("a"), 1, None, now);
    desk.driver_online(named("a"), 2, None, now);
    assert!(desk.driver_offline(&named("a"), &1, now).is_empty());
    assert_eq!(desk.online_drivers(), [(named("a"), 2)]);
}

#[test]
fn an_anonymous_drivers_packages_return_when_it_leaves() {
    let now = Instant::now();
    let mut desk = desk();
    let anon = DriverKey::Anonymous("sid1".into());
    desk.driver_online(anon.clone(), 1, None, now);
    pickup(&mut desk, "o1", now);
    desk.in_transit(&anon, &OrderKey::of(&order("o1"))).unwrap();
    desk.driver_offline(&anon, &1, now);
    assert_eq!(
        desk.state_of(&OrderKey::of(&order("o1"))),
        Some(OrderState::Ready)
    );
    assert!(desk.drivers().is_empty());
    let effects = desk.driver_online(named("b"), 2, None, now);
    assert_eq!(offers(&effects), [("b".to_string(), "o1".to_string())]);
}

#[test]
fn packages_of_a_driver_away_too_long_are_reclaimed() {
    let start = Instant::now();
    let mut desk = desk();
    desk.driver_online(named("a"), 1, None, start);
    pickup(&mut desk, "o1", start);
    desk.in_transit(&named("a"), &OrderKey::of(&order("o1")))
        .unwrap();
    desk.driver_offline(&named("a"), &1, start);
    desk.driver_online(named("b"), 2, None, start);
    assert!(desk.tick(start + Duration::from_secs(30)).is_empty());
    let reclaimed = offers(&desk.tick(start + Duration::from_secs(60)));
    assert_eq!(reclaimed, [("b".to_string(), "o1".to_string())]);
    let key = OrderKey::of(&order("o1"));
    assert!(
        desk.in_transit(&named("b"), &key).unwrap().is_empty(),
        "the store heard in-transit already"
    );
    assert_eq!(desk.delivered(&named("b"), &key, start).unwrap().len(), 1);
}

#[test]
fn every_change_is_recorded_and_a_restored_desk_resumes() {
    let now = Instant::now();
    let mut desk = desk();
    desk.driver_online(named("a"), 1, None, now);
    pickup(&mut desk, "carried", now);
    pickup(&mut desk, "offered", now);
    desk.in_transit(&named("a"), &OrderKey::of(&order("carried")))
        .unwrap();
    let changes = desk.take_changes();
    let kinds: Vec<String> = changes
        .iter()
        .map(|change| match change {
            Change::NewOrder { order, .. } => format!("new {}", order.order_id),
            Change::Transition { key, state, .. } => format!("{} {state}", key.order_id),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "new carried",
            "carried assigned",
            "new offered",
            "offered assigned",
            "carried in-transit"
        ]
    );
    assert!(desk.take_changes().is_empty());

    let stored = |id: &str, seq: u64, state: OrderState, driver: Option<DriverKey>| StoredOrder {
        order: order(id),
        seq,
        state,
        driver,
        version: 2,
        digest: None,
        told_in_transit: state == OrderState::InTransit,
        since: Utc::now(),
        history: Vec::new(),
    };
    let mut delivered_before = OrderCounts::default();
    delivered_before.set(OrderState::Delivered, 7);
    let mut restored: TestDesk = Desk::restore(
        DeskConfig::default(),
        vec![
            stored("carried", 0, OrderState::InTransit, Some(named("a"))),
            stored("offered", 1, OrderState::Assigned, Some(named("a"))),
            stored("done", 2, OrderState::Delivered, Some(named("a"))),
        ],
        &delivered_before,
        (3, 1),
        now,
    );
    assert_eq!(
        restored.state_of(&OrderKey::of(&order("offered"))),
        Some(OrderState::Ready)
    );
    assert_eq!(
        restored.take_changes().len(),
        1,
        "the void offer is recorded as ready again"
    );
    assert_eq!(restored.counts().get(OrderState::Delivered), 7);
    let (outcome, _) = restored.pickup(order("done"), now).unwrap();
    assert_eq!(outcome, PickupOutcome::Repeated(OrderState::Delivered));
    let back = offers(&restored.driver_online(named("a"), 2, None, now));
    assert_eq!(
        back,
        [
            ("a".to_string(), "carried".to_string()),
            ("a".to_string(), "offered".to_string())
        ]
    );
    let (_, effects) = restored.pickup(order("new"), now).unwrap();
    assert_eq!(offers(&effects).len(), 1);
    assert!(matches!(
        restored
            .take_changes()
            .iter()
            .find(|c| matches!(c, Change::NewOrder { .. })),
        Some(Change::NewOrder { seq: 3, .. })
    ));
}

#[test]
fn hubs_sharing_a_database_number_orders_apart_and_adopt_each_others() {
    let now = Instant::now();
    // Hub slot 2 of stride 8: its numbers are 2, 10, 18, ...
    let mut desk: TestDesk = Desk::restore(
        DeskConfig::default(),
        Vec::new(),
        &OrderCounts::default(),
        (10, 8),
        now,
    );
    pickup(&mut desk, "mine", now);
    let adopted = StoredOrder {
        order: order("theirs"),
        seq: 29,
        state: OrderState::Assigned,
        driver: Some(named("elsewhere")),
        version: 3,
        digest: None,
        told_in_transit: false,
        since: Utc::now(),
        history: Vec::new(),
    };
    assert!(
        desk.adopt(vec![adopted.clone()], Adoption::Restart, now)
            .is_empty(),
        "no driver yet"
    );
    pickup(&mut desk, "after", now);
    let seqs: Vec<u64> = desk
        .take_changes()
        .iter()
        .filter_map(|change| match change {
            Change::NewOrder { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, [10, 34], "past the adopted 29, still 2 mod 8");
    assert_eq!(
        desk.state_of(&OrderKey::of(&order("theirs"))),
        Some(OrderState::Ready),
        "an adopted offer is void"
    );
    assert_eq!(desk.spare_capacity(), (0, 3));
    desk.driver_online(named("a"), 1, Some(5), now);
    assert_eq!(desk.spare_capacity(), (2, 0), "three offered, room for two");

    // A driver connecting here keeps the offer it has.
    let moved = StoredOrder {
        order: order("moved"),
        seq: 37,
        driver: Some(named("b")),
        ..adopted
    };
    desk.adopt(vec![moved], Adoption::DriverMoved, now);
    assert_eq!(
        offers(&desk.driver_online(named("b"), 2, None, now)),
        [("b".to_string(), "moved".to_string())]
    );
    let key = OrderKey::of(&order("moved"));
    assert!(desk.in_transit(&named("b"), &key).is_ok());
}

#[test]
fn delivered_orders_beyond_the_memory_limit_are_forgotten() {
    let now = Instant::now();
    let mut desk = Desk::new(DeskConfig {
        keep_delivered: 2,
        ..DeskConfig::default()
    });
    desk.driver_online(named("a"), 1, None, now);
    for n in 0..3 {
        let id = format!("o{n}");
        desk.pickup(order(&id), now).unwrap();
        let key = OrderKey::of(&order(&id));
        desk.in_transit(&named("a"), &key).unwrap();
        desk.delivered(&named("a"), &key, now).unwrap();
    }
    assert_eq!(desk.state_of(&OrderKey::of(&order("o0"))), None);
    assert_eq!(
        desk.state_of(&OrderKey::of(&order("o2"))),
        Some(OrderState::Delivered)
    );
    assert_eq!(desk.counts().get(OrderState::Delivered), 3);
}

#[test]
fn a_delivered_order_is_kept_past_the_memory_limit_until_the_tables_hold_its_close() {
    let now = Instant::now();
    let mut desk = Desk::new(DeskConfig {
        keep_delivered: 1,
        ..DeskConfig::default()
    });
    desk.follow_tables();
    desk.driver_online(named("a"), 1, None, now);
    let held = |desk: &TestDesk, id: &str| desk.state_of(&OrderKey::of(&order(id))).is_some();
    for (n, seq) in [(0, 10), (1, 11), (2, 12)] {
        let id = format!("o{n}");
        desk.pickup(order(&id), now).unwrap();
        let key = OrderKey::of(&order(&id));
        desk.in_transit(&named("a"), &key).unwrap();
        desk.delivered(&named("a"), &key, now).unwrap();
        desk.take_changes();
        desk.sealed(seq);
    }
    assert!(
        ["o0", "o1", "o2"].iter().all(|id| held(&desk, id)),
        "no close is in the tables yet"
    );
    desk.in_tables(11);
    assert_eq!(
        ["o0", "o1", "o2"].map(|id| held(&desk, id)),
        [false, false, true],
        "the two in the tables go; the limit keeps one"
    );
}

#[test]
fn delivered_orders_read_back_count_against_the_memory_limit() {
    let now = Instant::now();
    let mut desk: TestDesk = Desk::new(DeskConfig {
        keep_delivered: 2,
        ..DeskConfig::default()
    });
    for n in 0..5 {
        let placed = order(&format!("r{n}"));
        let stored = StoredOrder {
            order: placed.clone(),
            seq: n,
            state: OrderState::Delivered,
            driver: Some(named("a")),
            version: 4,
            digest: None,
            told_in_transit: true,
            since: Utc::now(),
            history: Vec::new(),
        };
        desk.reload(&OrderKey::of(&placed), Some(stored), now);
    }
    let held: Vec<bool> = (0..5)
        .map(|n| {
            desk.state_of(&OrderKey::of(&order(&format!("r{n}"))))
                .is_some()
        })
        .collect();
    assert_eq!(held, [false, false, false, true, true]);
}

#[test]
fn offers_taken_up_leave_the_deadline_list_at_once() {
    let mut desk = desk();
    let now = Instant::now();
    desk.driver_online(named("a"), 1, None, now);
    for n in 0..1_000 {
        let placed = order(&format!("o{n}"));
        desk.pickup(placed.clone(), now).unwrap();
        desk.in_transit(&named("a"), &OrderKey::of(&placed))
            .unwrap();
    }
    desk.pickup(order("still-offered"), now).unwrap();
    assert_eq!(
        desk.offer_deadlines.len(),
        1,
        "memory holds the open offers, not every offer of the last offer timeout"
    );
}

#[test]
fn drivers_offline_with_nothing_in_hand_are_not_kept() {
    let mut desk = desk();
    let now = Instant::now();
    for n in 0..100 {
        let name = named(&format!("d{n}"));
        desk.driver_online(name.clone(), n, None, now);
        desk.driver_offline(&name, &n, now);
    }
    assert_eq!(desk.driver_count(), 0, "memory holds the working set");
    desk.driver_online(named("a"), 1, None, now);
    let placed = order("carried");
    desk.pickup(placed.clone(), now).unwrap();
    desk.in_transit(&named("a"), &OrderKey::of(&placed))
        .unwrap();
    desk.driver_offline(&named("a"), &1, now);
    assert_eq!(
        desk.driver_count(),
        1,
        "a driver away with a package is kept"
    );
}

#[test]
fn an_offer_read_back_from_the_records_still_expires() {
    // A refused commit can drop the offer's message: the desk, reloading
    // the order as recorded (offered to a driver), must not hold it for ever.
    let now = Instant::now();
    let mut desk = desk();
    desk.driver_online(named("a"), 1, None, now);
    desk.driver_online(named("b"), 2, None, now);
    let key = OrderKey::of(&order("o"));
    let recorded = StoredOrder {
        order: order("o"),
        seq: 5,
        state: OrderState::Assigned,
        driver: Some(named("a")),
        version: 2,
        digest: None,
        told_in_transit: false,
        since: Utc::now(),
        history: Vec::new(),
    };
    desk.reload(&key, Some(recorded), now);
    assert!(desk.tick(now).is_empty(), "the offer stands for now");
    let later = now + DeskConfig::default().offer_timeout + Duration::from_millis(1);
    let offers = offers(&desk.tick(later));
    assert_eq!(
        offers,
        [("b".to_string(), "o".to_string())],
        "it went to another driver"
    );
}
