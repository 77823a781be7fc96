use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn fired<K: Ord>(wheel: &mut Wheel<K>, now: u64) -> Vec<K> {
    let mut keys: Vec<K> = wheel.advance(now).collect();
    keys.sort();
    keys
}

#[test]
fn deadline_equal_to_now_fires_on_next_advance() {
    let mut wheel = Wheel::new(8);
    assert!(fired(&mut wheel, 5).is_empty());
    wheel.insert(1, 5);
    assert_eq!(fired(&mut wheel, 5), vec![1]);
}

#[test]
fn deadline_in_the_past_is_not_lost() {
    let mut wheel = Wheel::new(8);
    fired(&mut wheel, 100);
    wheel.insert(1, 3);
    assert_eq!(fired(&mut wheel, 100), vec![1]);
}

#[test]
fn never_fires_early_and_fires_on_its_tick() {
    let mut wheel = Wheel::new(8);
    wheel.insert(7, 3);
    assert!(fired(&mut wheel, 1).is_empty());
    assert!(fired(&mut wheel, 2).is_empty());
    assert_eq!(fired(&mut wheel, 3), vec![7]);
}

#[test]
fn exactly_one_rotation_ahead() {
    let mut wheel = Wheel::new(8);
    // Deadline 8 shares slot 0 with tick 0, the current tick.
    wheel.insert(1, 8);
    for now in 1..8 {
        assert!(fired(&mut wheel, now).is_empty(), "fired early at {now}");
    }
    assert_eq!(fired(&mut wheel, 8), vec![1]);
}

#[test]
fn many_rotations_ahead() {
    let mut wheel = Wheel::new(4);
    wheel.insert(1, 4 * 10 + 1);
    for now in 1..=40 {
        assert!(fired(&mut wheel, now).is_empty(), "fired early at {now}");
    }
    assert_eq!(fired(&mut wheel, 41), vec![1]);
}

#[test]
fn large_jump_fires_everything_due_and_nothing_else() {
    let mut wheel = Wheel::new(4);
    for d in 1..=50 {
        wheel.insert(d, d);
    }
    assert_eq!(fired(&mut wheel, 30), (1..=30).collect::<Vec<_>>());
    assert_eq!(wheel.elapsed(), 30);
    assert_eq!(wheel.len(), 20);
    assert_eq!(fired(&mut wheel, 50), (31..=50).collect::<Vec<_>>());
}

#[test]
fn cancel_after_fire_is_a_no_op() {
    let mut wheel = Wheel::new(8);
    let a = wheel.insert(1, 2);
    assert_eq!(fired(&mut wheel, 2), vec![1]);
    assert_eq!(wheel.remove(a), None);
    assert!(!wheel.reset(a, 10));
    assert_eq!(wheel.deadline(a), None);
}

#[test]
fn stale_key_does_not_touch_the_entry_that_reused_its_storage() {
    let mut wheel = Wheel::new(8);
    let a = wheel.insert(1, 2);
    assert_eq!(wheel.remove(a), Some(1));
    let b = wheel.insert(2, 4);
    assert_eq!(a.index, b.index, "the slab should reuse the freed entry");
    assert_eq!(wheel.remove(a), None);
    assert!(!wheel.reset(a, 1));
    assert_eq!(wheel.get(b), Some(&2));
    assert_eq!(fired(&mut wheel, 4), vec![2]);
}

#[test]
fn reschedule_into_the_current_slot() {
    let mut wheel = Wheel::new(8);
    let a = wheel.insert(1, 3);
    fired(&mut wheel, 3 - 1);
    // Current tick 2; deadline 10 maps to slot 2, the slot just processed.
    assert!(wheel.reset(a, 10));
    for now in 3..10 {
        assert!(fired(&mut wheel, now).is_empty(), "fired early at {now}");
    }
    assert_eq!(fired(&mut wheel, 10), vec![1]);
}

#[test]
fn reschedule_to_now_fires_on_next_advance() {
    let mut wheel = Wheel::new(8);
    let a = wheel.insert(1, 30);
    fired(&mut wheel, 4);
    assert!(wheel.reset(a, 4));
    assert_eq!(fired(&mut wheel, 4), vec![1]);
}

#[test]
fn dropping_the_iterator_keeps_the_rest() {
    let mut wheel = Wheel::new(8);
    for k in 0..10 {
        wheel.insert(k, 3);
    }
    let first: Vec<_> = wheel.advance(3).take(4).collect();
    assert_eq!(first.len(), 4);
    let mut rest = fired(&mut wheel, 3);
    rest.extend(first);
    rest.sort();
    assert_eq!(rest, (0..10).collect::<Vec<_>>());
}

#[test]
fn removing_and_resetting_between_polls() {
    let mut wheel = Wheel::new(4);
    let keys: Vec<_> = (0..4).map(|k| wheel.insert(k, 1 + 4 * k as u64)).collect();
    // The first poll walks slot 1 (all four timers) and fires key 0; the
    // cursor then points at key 1.
    assert_eq!(wheel.poll(1), Some(0));
    assert_eq!(wheel.remove(keys[2]), Some(2));
    assert!(wheel.reset(keys[3], 2));
    assert_eq!(wheel.poll(1), None);
    assert_eq!(fired(&mut wheel, 2), vec![3]);
    assert_eq!(fired(&mut wheel, 5), vec![1]);
}

#[test]
fn time_running_backwards_is_clamped() {
    let mut wheel = Wheel::new(8);
    fired(&mut wheel, 10);
    wheel.insert(1, 12);
    assert!(fired(&mut wheel, 3).is_empty());
    assert_eq!(wheel.elapsed(), 10);
    assert_eq!(fired(&mut wheel, 12), vec![1]);
}

#[test]
fn storage_is_reused_in_steady_state() {
    let mut wheel = Wheel::with_capacity(64, 16);
    let keys: Vec<_> = (0..16).map(|k| wheel.insert(k, 1000)).collect();
    for round in 0..1000u64 {
        let k = keys[(round % 16) as usize];
        wheel.reset(k, 1000 + round);
    }
    for &k in &keys {
        wheel.remove(k);
    }
    for k in 0..16 {
        wheel.insert(k, 5);
    }
    assert_eq!(
        wheel.slab.entries.len(),
        16,
        "slab grew beyond the working set"
    );
}

#[test]
#[should_panic(expected = "power of two")]
fn slot_count_must_be_a_power_of_two() {
    let _ = Wheel::<u32>::new(100);
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Op {
    /// Insert a new timer `delay` ticks after the current tick (0 = now).
    Insert { delay: u64 },
    /// Reset the `pick`-th timer ever inserted (live or not).
    Reset { pick: usize, delay: u64 },
    /// Remove the `pick`-th timer ever inserted (live or not).
    Remove { pick: usize },
    /// Advance by `by` ticks and compare what fired.
    Advance { by: u64 },
    /// Take only `take` expired timers at the current tick (partial drain).
    PartialAdvance { by: u64, take: usize },
}

fn op() -> impl Strategy<Value = Op> {
    // Delays up to 5 rotations of the 16-slot wheel used below, and some
    // large advances that jump more than a rotation at once.
    prop_oneof![
        4 => (0u64..80).prop_map(|delay| Op::Insert { delay }),
        3 => (any::<usize>(), 0u64..80).prop_map(|(pick, delay)| Op::Reset { pick, delay }),
        2 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
        3 => (0u64..6).prop_map(|by| Op::Advance { by }),
        1 => (0u64..70).prop_map(|by| Op::Advance { by }),
        1 => (0u64..6, 0usize..4).prop_map(|(by, take)| Op::PartialAdvance { by, take }),
    ]
}

proptest! {
    /// The wheel behaves like a `BTreeMap<id, deadline>` from which every
    /// advance removes exactly the entries whose deadline is `<= now`.
    #[test]
    fn behaves_like_a_btreemap(ops in proptest::collection::vec(op(), 1..300)) {
        let mut wheel = Wheel::new(16);
        let mut model: BTreeMap<usize, u64> = BTreeMap::new();
        let mut handles: Vec<TimerKey> = Vec::new();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Insert { delay } => {
                    let id = handles.len();
                    handles.push(wheel.insert(id, now + delay));
                    model.insert(id, now + delay);
                }
                Op::Reset { pick, delay } if !handles.is_empty() => {
                    let id = pick % handles.len();
                    let live = model.contains_key(&id);
                    prop_assert_eq!(wheel.reset(handles[id], now + delay), live);
                    if live {
                        model.insert(id, now + delay);
                    }
                }
                Op::Remove { pick } if !handles.is_empty() => {
                    let id = pick % handles.len();
                    prop_assert_eq!(wheel.remove(handles[id]), model.remove(&id).map(|_| id));
                }
                Op::Advance { by } => {
                    now += by;
                    let mut got: Vec<usize> = wheel.advance(now).collect();
                    got.sort();
                    let due: Vec<usize> =
                        model.iter().filter(|&(_, &d)| d <= now).map(|(&id, _)| id).collect();
                    for id in &due {
                        model.remove(id);
                    }
                    prop_assert_eq!(got, due, "at tick {}", now);
                }
                Op::PartialAdvance { by, take } => {
                    now += by;
                    let got: Vec<usize> = wheel.advance(now).take(take).collect();
                    for id in got {
                        let deadline = model.remove(&id);
                        prop_assert!(deadline.is_some_and(|d| d <= now),
                            "timer {} fired at {} with deadline {:?}", id, now, deadline);
                    }
                }
                _ => {}
            }
            prop_assert_eq!(wheel.len(), model.len());
            for (&id, &deadline) in &model {
                prop_assert_eq!(wheel.deadline(handles[id]), Some(deadline));
            }
        }
    }
}

#[test]
fn keys_are_dropped_exactly_once_whatever_their_fate() {
    use std::rc::Rc;
    let token = Rc::new(());
    {
        let mut wheel = Wheel::new(8);
        let keys: Vec<_> = (0..30)
            .map(|i| wheel.insert(Rc::clone(&token), i % 12))
            .collect();
        assert_eq!(Rc::strong_count(&token), 31);
        // Some removed, some fired, the rest dropped with the wheel.
        for &k in keys.iter().step_by(3) {
            drop(wheel.remove(k));
        }
        let fired: Vec<_> = wheel.advance(5).collect();
        assert!(!fired.is_empty());
        drop(fired);
        // Storage reused by new keys after all that.
        for i in 0..5 {
            wheel.insert(Rc::clone(&token), 100 + i);
        }
    }
    assert_eq!(
        Rc::strong_count(&token),
        1,
        "a key leaked or was dropped twice"
    );
}
