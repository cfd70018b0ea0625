// SPDX-License-Identifier: MIT
//! The schema helpers against the in-memory store: round trips, hostile
//! node values, transactions, the toolstack's layout.

use hyper_dmabuf_xenbus_mem_store::MemStore;
use hyper_dmabuf_xenbus_proto::schema::{self, *};
use hyper_dmabuf_xenbus_proto::store::{NodePath, Perm, PermKind, Store, Txn};
use hyper_dmabuf_xenbus_proto::ValueError;
use hyper_dmabuf_xenbus_proto::{Error, XenbusState};
use proptest::prelude::*;

const SPEC: DeviceSpec = DeviceSpec {
    front: 5,
    back: 0,
    devid: 0,
    max_ring_page_order: None,
    max_buffer_size: None,
    feature_rw: None,
};

fn dirs() -> (String, String) {
    (
        NodePath::frontend_dir(5, 0).unwrap().as_str().to_owned(),
        NodePath::backend_dir(0, 5, 0).unwrap().as_str().to_owned(),
    )
}

fn offered() -> BackendConfig {
    BackendConfig {
        max_ring_page_order: 2,
        max_buffer_size: 1 << 30,
        feature_rw: false,
    }
}

fn valid_rings(order: u32) -> FrontendRings {
    let n = 1u32 << order;
    let refs: Vec<u32> = (0..n).map(|i| 100 + i).collect();
    let back: Vec<u32> = (0..n).map(|i| 200 + i).collect();
    FrontendRings::new(1, order, &refs, &back, 17).unwrap()
}

#[test]
fn paths() {
    let (f, b) = dirs();
    assert_eq!(f, "/local/domain/5/device/hyper_dmabuf/0");
    assert_eq!(b, "/local/domain/0/backend/hyper_dmabuf/5/0");
    assert_eq!(
        NodePath::indexed(&f, NODE_RING_REF, 15).unwrap().as_str(),
        "/local/domain/5/device/hyper_dmabuf/0/ring-ref15"
    );
    let long = "x".repeat(300);
    assert_eq!(NodePath::new(&long, "state"), Err(Error::PathTooLong));
    assert_eq!(NodePath::new(&f, "a/b"), Err(Error::InvalidArgument));
    assert_eq!(NodePath::new(&f, ""), Err(Error::InvalidArgument));
    assert_eq!(NodePath::new("", "state"), Err(Error::InvalidArgument));
}

#[test]
fn toolstack_refuses_a_device_that_exists_at_either_end() {
    let (f, b) = dirs();
    for leftover in [&f, &b] {
        let mut s = MemStore::new();
        s.write(Txn::NONE, leftover, b"").unwrap();
        assert_eq!(create_device(&mut s, &SPEC), Err(Error::Exists));
        // Nothing of the refused device was written.
        assert_eq!(s.nodes_below(&f).len() + s.nodes_below(&b).len(), 1);
        assert_eq!(s.open_transactions(), 0);
    }
    let mut s = MemStore::new();
    create_device(&mut s, &SPEC).unwrap();
    assert_eq!(create_device(&mut s, &SPEC), Err(Error::Exists));
}

#[test]
fn toolstack_layout_and_removal() {
    let mut s = MemStore::new();
    create_device(
        &mut s,
        &DeviceSpec {
            max_buffer_size: Some(4096),
            ..SPEC
        },
    )
    .unwrap();
    let (f, b) = dirs();
    let get = |s: &MemStore, p: String| s.get_str(&p);
    assert_eq!(get(&s, format!("{f}/backend")), Some(b.clone()));
    assert_eq!(get(&s, format!("{f}/backend-id")), Some("0".into()));
    assert_eq!(get(&s, format!("{f}/state")), Some("1".into()));
    assert_eq!(get(&s, format!("{b}/frontend")), Some(f.clone()));
    assert_eq!(get(&s, format!("{b}/frontend-id")), Some("5".into()));
    assert_eq!(get(&s, format!("{b}/online")), Some("1".into()));
    assert_eq!(get(&s, format!("{b}/state")), Some("1".into()));
    assert_eq!(get(&s, format!("{b}/max-buffer-size")), Some("4096".into()));
    assert_eq!(get(&s, format!("{b}/feature-rw")), None);
    let p = |domid, kind| Perm { domid, kind };
    assert_eq!(
        s.perms(&f),
        Some(&[p(5, PermKind::None), p(0, PermKind::Read)][..])
    );
    assert_eq!(
        s.perms(&format!("{f}/state")),
        Some(&[p(5, PermKind::None), p(0, PermKind::Read)][..])
    );
    assert_eq!(
        s.perms(&b),
        Some(&[p(0, PermKind::None), p(5, PermKind::Read)][..])
    );
    // The frontend domain may write its own directory, read the backend's,
    // and not write the backend's.
    s.act_as(Some(5));
    s.write(Txn::NONE, &format!("{f}/state"), b"2").unwrap();
    assert_eq!(read_state(&mut s, &b), Ok(XenbusState::Initialising));
    assert_eq!(
        write_state(&mut s, &b, XenbusState::Closed),
        Err(Error::Denied)
    );
    s.act_as(None);

    begin_remove_device(&mut s, &SPEC).unwrap();
    assert_eq!(read_online(&mut s, &b), Ok(false));
    assert_eq!(read_state(&mut s, &b), Ok(XenbusState::Closing));
    remove_device_dirs(&mut s, &SPEC).unwrap();
    assert!(s.nodes_below(&f).is_empty());
    assert!(s.nodes_below(&b).is_empty());
    assert_eq!(s.open_transactions(), 0);
    // Closing a device that is gone must not create its directory again.
    assert_eq!(
        begin_remove_device(&mut s, &SPEC),
        Err(Error::Missing {
            node: "state",
            index: None
        })
    );
    assert!(s.nodes_below(&b).is_empty());
    assert_eq!(s.open_transactions(), 0);

    assert_eq!(
        create_device(
            &mut s,
            &DeviceSpec {
                front: 0x7ff0,
                ..SPEC
            }
        ),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        create_device(
            &mut s,
            &DeviceSpec {
                max_ring_page_order: Some(5),
                ..SPEC
            }
        ),
        Err(Error::InvalidArgument)
    );
}

#[test]
fn state_and_online_nodes() {
    let mut s = MemStore::new();
    let (_, b) = dirs();
    assert_eq!(read_state(&mut s, &b), Ok(XenbusState::Unknown));
    assert_eq!(read_online(&mut s, &b), Ok(false));
    for st in XenbusState::ALL.iter().skip(1) {
        write_state(&mut s, &b, *st).unwrap();
        assert_eq!(read_state(&mut s, &b), Ok(*st));
    }
    assert_eq!(
        write_state(&mut s, &b, XenbusState::Unknown),
        Err(Error::InvalidArgument)
    );
    for bad in [&b"0"[..], b"9", b"04", b"4 ", b"", b"Connected"] {
        s.poke(&format!("{b}/state"), bad);
        assert!(
            matches!(
                read_state(&mut s, &b),
                Err(Error::Value {
                    node: "state",
                    index: None,
                    ..
                })
            ),
            "{bad:?}"
        );
    }
    s.poke(&format!("{b}/state"), &[b'4'; 5000]);
    assert_eq!(
        read_state(&mut s, &b),
        Err(Error::Value {
            node: "state",
            index: None,
            error: ValueError::TooLong { max: 64 }
        })
    );
    s.poke(&format!("{b}/online"), b"1");
    assert_eq!(read_online(&mut s, &b), Ok(true));
    s.poke(&format!("{b}/online"), b"2");
    assert!(read_online(&mut s, &b).is_err());
}

#[test]
fn backend_publish_and_frontend_read() {
    let mut s = MemStore::new();
    let (_, b) = dirs();
    publish_backend(&mut s, &b, &offered()).unwrap();
    assert_eq!(s.get_str(&format!("{b}/versions")), Some("1,2,3".into()));
    assert_eq!(
        s.get_str(&format!("{b}/max-buffer-size")),
        Some("1073741824".into())
    );
    let offer = read_backend_config(&mut s, &b).unwrap();
    assert_eq!(offer.config, offered());
    let n = negotiate(
        &offer,
        &FrontendLimits {
            max_ring_page_order: 4,
            max_buffer_size: 1 << 20,
        },
    )
    .unwrap();
    assert_eq!(
        n,
        Negotiated {
            version: 3,
            ring_page_order: 2,
            max_buffer_size: 1 << 20,
            feature_rw: false
        }
    );
    // A backend that speaks only version 1 gets version 1.
    s.poke(&format!("{b}/versions"), b"1");
    let old = read_backend_config(&mut s, &b).unwrap();
    let limits = FrontendLimits {
        max_ring_page_order: 4,
        max_buffer_size: 1 << 20,
    };
    assert_eq!(negotiate(&old, &limits).unwrap().version, 1);
    publish_backend(&mut s, &b, &offered()).unwrap();
    assert_eq!(
        publish_backend(
            &mut s,
            &b,
            &BackendConfig {
                max_ring_page_order: 5,
                ..offered()
            }
        ),
        Err(Error::InvalidArgument)
    );
}

#[test]
fn hostile_backend_nodes() {
    let (_, b) = dirs();
    let cases: [(&str, &[u8]); 9] = [
        ("versions", b"4"),
        ("versions", b"1,1"),
        ("versions", b""),
        ("max-ring-page-order", b"5"),
        ("max-ring-page-order", b"-1"),
        ("max-buffer-size", b"0"),
        ("max-buffer-size", b"18446744073709551616"),
        ("feature-rw", b"yes"),
        ("feature-rw", b"01"),
    ];
    for (node, value) in cases {
        let mut s = MemStore::new();
        publish_backend(&mut s, &b, &offered()).unwrap();
        s.poke(&format!("{b}/{node}"), value);
        let r = read_backend_config(&mut s, &b).and_then(|o| {
            negotiate(
                &o,
                &FrontendLimits {
                    max_ring_page_order: 4,
                    max_buffer_size: 1,
                },
            )
        });
        assert!(r.is_err(), "{node} = {value:?} accepted");
    }
    for node in [
        "versions",
        "max-ring-page-order",
        "max-buffer-size",
        "feature-rw",
    ] {
        let mut s = MemStore::new();
        publish_backend(&mut s, &b, &offered()).unwrap();
        s.zap(&format!("{b}/{node}"));
        assert!(
            matches!(read_backend_config(&mut s, &b), Err(Error::Missing { .. })),
            "{node}"
        );
    }
}

#[test]
fn toolstack_config_defaults_and_caps() {
    let (_, b) = dirs();
    let limits = BackendLimits {
        default_ring_page_order: 1,
        max_ring_page_order: 3,
        default_max_buffer_size: 1 << 40,
        max_buffer_size_ceiling: 1 << 32,
    };
    let mut s = MemStore::new();
    assert_eq!(
        read_toolstack_config(&mut s, &b, &limits),
        Ok(BackendConfig {
            max_ring_page_order: 1,
            max_buffer_size: 1 << 32,
            feature_rw: false
        })
    );
    s.poke(&format!("{b}/max-ring-page-order"), b"3");
    s.poke(&format!("{b}/max-buffer-size"), b"65536");
    s.poke(&format!("{b}/feature-rw"), b"1");
    assert_eq!(
        read_toolstack_config(&mut s, &b, &limits),
        Ok(BackendConfig {
            max_ring_page_order: 3,
            max_buffer_size: 65536,
            feature_rw: true
        })
    );
    s.poke(&format!("{b}/max-buffer-size"), b"18446744073709551615");
    assert_eq!(
        read_toolstack_config(&mut s, &b, &limits).map(|c| c.max_buffer_size),
        Ok(1 << 32)
    );
    s.poke(&format!("{b}/max-ring-page-order"), b"4");
    assert!(matches!(
        read_toolstack_config(&mut s, &b, &limits),
        Err(Error::Value {
            node: "max-ring-page-order",
            ..
        })
    ));
    assert_eq!(
        read_toolstack_config(
            &mut s,
            &b,
            &BackendLimits {
                max_ring_page_order: 5,
                ..limits
            }
        ),
        Err(Error::InvalidArgument)
    );
}

#[test]
fn frontend_round_trip_every_order() {
    let (f, _) = dirs();
    let offered = BackendConfig {
        max_ring_page_order: MAX_RING_PAGE_ORDER,
        ..offered()
    };
    for order in 0..=MAX_RING_PAGE_ORDER {
        let mut s = MemStore::new();
        let rings = valid_rings(order);
        publish_frontend(&mut s, &f, &rings).unwrap();
        assert_eq!(read_frontend_rings(&mut s, &f, &offered), Ok(rings));
        assert_eq!(s.get_str(&format!("{f}/ring-ref0")), Some("100".to_owned()));
        assert_eq!(s.open_transactions(), 0);
    }
}

#[test]
fn stale_ring_refs_are_removed_on_republish() {
    let (f, _) = dirs();
    let mut s = MemStore::new();
    publish_frontend(&mut s, &f, &valid_rings(2)).unwrap();
    publish_frontend(&mut s, &f, &valid_rings(0)).unwrap();
    assert_eq!(s.get(&format!("{f}/ring-ref1")), None);
    assert_eq!(s.get(&format!("{f}/back-ring-ref3")), None);
    assert_eq!(
        read_frontend_rings(&mut s, &f, &offered()),
        Ok(valid_rings(0))
    );
    clear_frontend(&mut s, &f).unwrap();
    // Only the directory itself is left.
    assert_eq!(s.nodes_below(&f), vec![(f.clone(), Vec::new())]);
}

#[test]
fn hostile_frontend_nodes() {
    let (f, _) = dirs();
    let fresh = || {
        let mut s = MemStore::new();
        publish_frontend(&mut s, &f, &valid_rings(1)).unwrap();
        s
    };
    let check = |s: &mut MemStore, want: Error| {
        assert_eq!(read_frontend_rings(s, &f, &offered()), Err(want));
        assert_eq!(s.open_transactions(), 0);
    };

    let mut s = fresh();
    s.zap(&format!("{f}/ring-ref1"));
    check(
        &mut s,
        Error::Missing {
            node: "ring-ref",
            index: Some(1),
        },
    );

    let mut s = fresh();
    s.poke(&format!("{f}/back-ring-ref2"), b"300");
    check(
        &mut s,
        Error::ExtraNode {
            node: "back-ring-ref",
            index: 2,
        },
    );

    let mut s = fresh();
    s.poke(&format!("{f}/back-ring-ref15"), b"garbage");
    check(
        &mut s,
        Error::Value {
            node: "back-ring-ref",
            index: Some(15),
            error: ValueError::NotDecimal { offset: 0 },
        },
    );

    let mut s = fresh();
    s.poke(&format!("{f}/back-ring-ref0"), b"100");
    check(&mut s, Error::DuplicateGref(100));

    let mut s = fresh();
    s.poke(&format!("{f}/ring-ref0"), b"7");
    check(
        &mut s,
        Error::Value {
            node: "ring-ref",
            index: Some(0),
            error: ValueError::OutOfRange {
                value: 7,
                min: 8,
                max: u32::MAX.into(),
            },
        },
    );

    let mut s = fresh();
    s.poke(&format!("{f}/version"), b"4");
    check(&mut s, Error::UnsupportedVersion(4));

    let mut s = fresh();
    s.poke(&format!("{f}/ring-page-order"), b"3");
    check(&mut s, Error::RingOrderTooLarge { order: 3, max: 2 });

    let mut s = fresh();
    s.poke(&format!("{f}/ring-page-order"), b"4294967296");
    check(
        &mut s,
        Error::Value {
            node: "ring-page-order",
            index: None,
            error: ValueError::Overflow,
        },
    );

    let mut s = fresh();
    s.poke(&format!("{f}/event-channel"), b"0");
    check(
        &mut s,
        Error::Value {
            node: "event-channel",
            index: None,
            error: ValueError::OutOfRange {
                value: 0,
                min: 1,
                max: u32::MAX.into(),
            },
        },
    );

    let mut s = fresh();
    s.zap(&format!("{f}/event-channel"));
    check(
        &mut s,
        Error::Missing {
            node: "event-channel",
            index: None,
        },
    );

    let mut s = fresh();
    s.poke(&format!("{f}/ring-ref0"), &vec![b'9'; 4096]);
    check(
        &mut s,
        Error::Value {
            node: "ring-ref",
            index: Some(0),
            error: ValueError::TooLong { max: 64 },
        },
    );
}

#[test]
fn transactions_retry_then_give_up() {
    let (f, b) = dirs();
    let mut s = MemStore::new();
    s.fail_next_commits(3);
    publish_frontend(&mut s, &f, &valid_rings(1)).unwrap();
    assert_eq!(
        read_frontend_rings(&mut s, &f, &offered()),
        Ok(valid_rings(1))
    );

    let mut s = MemStore::new();
    s.fail_next_commits(1000);
    assert_eq!(
        publish_frontend(&mut s, &f, &valid_rings(1)),
        Err(Error::RetriesExhausted)
    );
    assert_eq!(s.get(&format!("{f}/ring-ref0")), None);
    assert_eq!(
        publish_backend(&mut s, &b, &offered()),
        Err(Error::RetriesExhausted)
    );
    assert_eq!(s.open_transactions(), 0);
}

#[test]
fn frontend_rings_constructor_checks() {
    assert!(FrontendRings::new(1, 5, &[], &[], 1).is_err());
    assert!(FrontendRings::new(0, 0, &[8], &[9], 1).is_err());
    assert!(FrontendRings::new(1, 0, &[8], &[9], 0).is_err());
    assert!(FrontendRings::new(1, 0, &[8, 10], &[9], 1).is_err());
    assert!(FrontendRings::new(1, 0, &[7], &[9], 1).is_err());
    assert_eq!(
        FrontendRings::new(1, 0, &[8], &[8], 1),
        Err(Error::DuplicateGref(8))
    );
}

#[test]
fn error_messages_name_the_node() {
    let e = Error::Value {
        node: schema::NODE_RING_REF,
        index: Some(3),
        error: ValueError::LeadingZero,
    };
    assert_eq!(e.to_string(), "node ring-ref3: number with a leading zero");
    assert_eq!(
        Error::Missing {
            node: "event-channel",
            index: None
        }
        .to_string(),
        "node event-channel missing"
    );
}

fn node_names() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("version".to_owned()),
        Just("ring-page-order".to_owned()),
        Just("event-channel".to_owned()),
        (0u32..18).prop_map(|i| format!("ring-ref{i}")),
        (0u32..18).prop_map(|i| format!("back-ring-ref{i}")),
    ]
}

proptest! {
    #[test]
    fn frontend_round_trip(
        order in 0..=MAX_RING_PAGE_ORDER,
        grefs in proptest::collection::btree_set(8u32.., 32),
        port in 1u32..,
    ) {
        let n = 1usize << order;
        let grefs: Vec<u32> = grefs.into_iter().collect();
        let rings = FrontendRings::new(1, order, &grefs[..n], &grefs[n..2 * n], port).unwrap();
        let (f, _) = dirs();
        let mut s = MemStore::new();
        publish_frontend(&mut s, &f, &rings).unwrap();
        let offered = BackendConfig { max_ring_page_order: 4, ..offered() };
        prop_assert_eq!(read_frontend_rings(&mut s, &f, &offered), Ok(rings));
    }

    #[test]
    fn backend_round_trip(order in 0..=MAX_RING_PAGE_ORDER, size in 1u64.., rw in any::<bool>()) {
        let (_, b) = dirs();
        let mut s = MemStore::new();
        let c = BackendConfig { max_ring_page_order: order, max_buffer_size: size, feature_rw: rw };
        publish_backend(&mut s, &b, &c).unwrap();
        prop_assert_eq!(read_backend_config(&mut s, &b).map(|o| o.config), Ok(c));
    }

    /// One hostile value in any node of a valid publication: the reader
    /// either refuses it or returns exactly what the store holds.
    #[test]
    fn one_hostile_frontend_node(
        node in node_names(),
        value in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let (f, _) = dirs();
        let mut s = MemStore::new();
        publish_frontend(&mut s, &f, &valid_rings(1)).unwrap();
        s.poke(&format!("{f}/{node}"), &value);
        if let Ok(r) = read_frontend_rings(&mut s, &f, &offered()) {
            for (i, g) in r.ring_refs().iter().enumerate() {
                let stored = s.get_str(&format!("{f}/ring-ref{i}"));
                prop_assert_eq!(stored, Some(g.to_string()));
            }
            for (i, g) in r.back_ring_refs().iter().enumerate() {
                let stored = s.get_str(&format!("{f}/back-ring-ref{i}"));
                prop_assert_eq!(stored, Some(g.to_string()));
            }
            prop_assert_eq!(s.get_str(&format!("{f}/event-channel")), Some(r.event_channel().to_string()));
        }
        prop_assert_eq!(s.open_transactions(), 0);
    }

    /// Arbitrary bytes in every backend node: never a panic, and an
    /// accepted offer is in range.
    #[test]
    fn hostile_backend_values(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 4)) {
        let (_, b) = dirs();
        let mut s = MemStore::new();
        for (node, v) in ["versions", "max-ring-page-order", "max-buffer-size", "feature-rw"].iter().zip(&values) {
            s.poke(&format!("{b}/{node}"), v);
        }
        if let Ok(o) = read_backend_config(&mut s, &b) {
            prop_assert!(o.config.validate().is_ok());
        }
    }
}
