//! `cargo run --release -p oncely-bench --example quick -- sqlite 100000 256 0`: the engine without
//! the CLI. The first argument may be a server URL (`postgres://...`, `mysql://...`).

use oncely_bench::{BenchConfig, NoProgress, format_table, store_kind};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_owned());
    let url = arg(0, "sqlite");
    let config = BenchConfig {
        store: store_kind(&url).expect("memory, sqlite, postgres://... or mysql://..."),
        url: url.clone(),
        dir: std::env::temp_dir().join("oncely-bench"),
        events: arg(1, "100000").parse().unwrap(),
        duplicate_ratio: 0.1,
        concurrency: arg(2, "256").parse().unwrap(),
        naive_events: arg(4, "2000").parse().unwrap(),
        preload: arg(3, "0").parse().unwrap(),
        seed: 1,
        page_size: arg(5, "4096").parse().unwrap(),
    };
    let results = oncely_bench::run(&config, &NoProgress).expect("bench");
    print!("{}", format_table(&results));
}
