//! A tiny run of the benchmark: everything is placed, nothing is lost, and the figures add up.

use flotilla_bench_scheduler::{Config, run};
use flotilla_scheduler::Algorithm;

fn config(usage_index: bool, diff_index: bool) -> Config {
    Config {
        nodes: 200,
        allocs: 3_000,
        workers: 2,
        seed: 3,
        algorithm: Algorithm::Binpack,
        usage_index,
        diff_index,
    }
}

#[test]
fn places_everything_with_and_without_the_index() {
    for (index, diff) in [(true, false), (true, true), (false, false)] {
        let r = run(&config(index, diff)).unwrap();
        assert_eq!(r.failed_evaluations, 0, "{}", r.render());
        assert_eq!(r.failed_placements, 0, "{}", r.render());
        assert!(r.placements >= 2_900, "{}", r.render());
        assert_eq!(r.live_allocs as u64, r.placements, "{}", r.render());
        assert!(r.placements_per_sec() > 0.0);
        assert!(r.latency_p50 <= r.latency_p99 && r.latency_p99 <= r.latency_max);
        let text = r.render();
        assert!(text.contains("vs Nomad C1M"), "{text}");
        assert!(text.contains("vs Kubernetes scheduler SLO"), "{text}");
    }
}
