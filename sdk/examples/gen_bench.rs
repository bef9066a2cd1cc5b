//! Times generating a 1,000-service mesh (spec text -> canonical YAML files, no Envoy) and
//! checks the output is byte-identical across runs.
//! `cargo run --release -p sdk --example gen_bench [services]`

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a.parse()?,
        None => 1000,
    };
    let text = sdk::synthetic::spec(n);
    let mut times = Vec::new();
    let mut hashes = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let spec = sdk::generate::parse_spec(&text, "big.yaml")?;
        let mesh = sdk::ir::Mesh::from_spec(&spec)?;
        let files = sdk::generate::files(&mesh, &sdk::translate::Layout::container())?;
        times.push(start.elapsed().as_secs_f64());
        let all: String = files.values().map(String::as_str).collect();
        hashes.push(sdk::emit::content_hash(all.as_bytes()));
        println!("{n} services: {} files, {} bytes", files.len(), all.len());
    }
    times.sort_by(f64::total_cmp);
    hashes.dedup();
    println!(
        "spec -> canonical YAML: best {:.3} s, median {:.3} s, worst {:.3} s (5 runs); distinct outputs: {}",
        times.first().copied().unwrap_or_default(),
        times.get(times.len() / 2).copied().unwrap_or_default(),
        times.last().copied().unwrap_or_default(),
        hashes.len()
    );
    if hashes.len() != 1 {
        return Err("output differs between runs".into());
    }
    Ok(())
}
