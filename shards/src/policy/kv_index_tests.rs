//! The kv_aware index's unit tests: depths per medium, removals, provisional copies,
//! and random changes against a plain model.
use super::*;
use std::collections::HashMap;

fn stored(names: &[u64], m: Medium) -> BlockChanges {
    BlockChanges {
        stored: names.iter().map(|n| (*n, m)).collect(),
        ..Default::default()
    }
}

#[test]
fn depth_per_medium_and_removal() {
    let mut x = KvIndex::default();
    x.apply(1, &stored(&[10, 11, 12], Medium::Device));
    x.apply(2, &stored(&[10], Medium::Device));
    x.apply(2, &stored(&[11, 12, 13], Medium::Host));
    x.apply(2, &stored(&[11], Medium::External));
    let mut d = Vec::new();
    x.depths([10, 11, 12, 13], &mut d);
    d.sort_by_key(|d| d.worker);
    assert_eq!(
        d,
        vec![
            Depth {
                worker: 1,
                device: 3,
                host: 3,
                disk: 3,
                external: 3,
                provisional: 0,
            },
            Depth {
                worker: 2,
                device: 1,
                host: 4,
                disk: 1,
                external: 2,
                provisional: 0,
            },
        ]
    );
    x.apply(
        1,
        &BlockChanges {
            removed: vec![(11, Medium::Device)],
            ..Default::default()
        },
    );
    x.depths([10, 11, 12], &mut d);
    let one = d.iter().find(|d| d.worker == 1).unwrap();
    assert_eq!(one.device, 1, "a hole ends the prefix");
    assert_eq!(x.held(1), 2);
    x.forget(2);
    x.depths([10], &mut d);
    assert_eq!(d.len(), 1);
    assert_eq!(x.held(2), 0);
}

#[test]
fn a_cleared_worker_holds_nothing() {
    let mut x = KvIndex::default();
    x.apply(3, &stored(&[1, 2], Medium::Device));
    let mut c = stored(&[7], Medium::Device);
    c.cleared = true;
    x.apply(3, &c);
    let mut d = Vec::new();
    x.depths([1, 2], &mut d);
    assert!(d.is_empty());
    assert_eq!(x.held(3), 1);
}

#[test]
fn a_provisional_copy_counts_as_on_the_gpu_until_it_expires_or_is_removed() {
    let mut x = KvIndex::default();
    let t0 = Instant::now();
    let later = t0 + std::time::Duration::from_secs(10);
    x.provisional(1, &[10, 11, 12], t0, later);
    let mut d = Vec::new();
    x.depths([10, 11, 12], &mut d);
    assert_eq!((d[0].worker, d[0].device, d[0].provisional), (1, 3, 3));
    // The worker's events confirm two; it drops the third.
    x.apply(1, &stored(&[10, 11], Medium::Device));
    x.apply(
        1,
        &BlockChanges {
            removed: vec![(12, Medium::Device)],
            ..Default::default()
        },
    );
    x.depths([10, 11, 12], &mut d);
    assert_eq!((d[0].device, d[0].provisional), (2, 0));
    // Expired: only what the events said is left.
    x.provisional(2, &[10], t0, later);
    x.expire(later);
    x.depths([10, 11, 12], &mut d);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].worker, d[0].device), (1, 2));
    assert_eq!((x.held(1), x.held(2)), (2, 0));
}

/// Random changes over 80 workers (so some have no slot) against a plain map of
/// (block, worker) -> media: every lookup must agree with the obvious walk.
#[test]
fn depths_agree_with_a_plain_model() {
    const DEV: u8 = 1;
    const PROV: u8 = 0x80;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut x = KvIndex::default();
    let mut model: HashMap<(u64, WorkerId), u8> = HashMap::new();
    let t0 = Instant::now();
    let never = t0 + std::time::Duration::from_secs(3600);
    let media = [Medium::Device, Medium::Host, Medium::Disk, Medium::External];
    let mut out = Vec::new();
    for round in 0..8_000 {
        let w = rnd(80) as WorkerId;
        let name = rnd(12);
        let m = media[rnd(4) as usize];
        match rnd(20) {
            0..=9 => {
                x.apply(w, &stored(&[name], m));
                *model.entry((name, w)).or_default() |= m.bit();
            }
            10..=13 => {
                let removed = vec![(name, m)];
                x.apply(
                    w,
                    &BlockChanges {
                        removed,
                        ..Default::default()
                    },
                );
                if let Some(v) = model.get_mut(&(name, w)) {
                    *v &= !(m.bit() | PROV);
                }
            }
            14..=16 => {
                x.provisional(w, &[name], t0, never);
                let v = model.entry((name, w)).or_default();
                if *v & (DEV | PROV) == 0 {
                    *v |= PROV;
                }
            }
            17 if rnd(8) == 0 => {
                x.forget(w);
                model.retain(|(_, o), _| *o != w);
            }
            _ => {}
        }
        model.retain(|_, v| *v != 0);
        let names: Vec<u64> = (0..1 + rnd(6)).map(|_| rnd(12)).collect();
        x.depths(names.iter().copied(), &mut out);
        let mut got = out.clone();
        got.sort_by_key(|d| d.worker);
        let mut want: Vec<Depth> = (0..80)
            .filter(|w| model.contains_key(&(names[0], *w)))
            .map(|w| {
                let run = |ok: &dyn Fn(u8) -> bool| {
                    (names.iter())
                        .take_while(|n| model.get(&(**n, w)).is_some_and(|v| ok(*v)))
                        .count()
                };
                let tier = |b: u8| run(&|v| v & (DEV | PROV | b) != 0);
                let device = run(&|v| v & (DEV | PROV) != 0);
                let provisional = (names[..device].iter())
                    .filter(|n| model[&(**n, w)] & DEV == 0)
                    .count();
                Depth {
                    worker: w,
                    device,
                    host: tier(Medium::Host.bit()),
                    disk: tier(Medium::Disk.bit()),
                    external: tier(Medium::External.bit()),
                    provisional,
                }
            })
            .collect();
        want.sort_by_key(|d| d.worker);
        assert_eq!(got, want, "round {round}, names {names:?}");
        for d in &want {
            assert_eq!(x.depth_of(d.worker, &out), Some(d));
        }
        let held = model.keys().filter(|(_, o)| *o == w).count();
        assert_eq!(x.held(w), held, "round {round}");
    }
}
