//! Synthetic meshes of any size, for scale tests and the generation benchmark.

/// A spec with `n` services; each calls the next two, half use endpoint files, the front proxy
/// routes to the first 50.
pub fn spec(n: usize) -> String {
    let mut s = String::from(
        "name: big\nfront_proxy:\n  listeners:\n    - name: public\n      port: 8080\n      routes:\n",
    );
    for i in 0..n.min(50) {
        s.push_str(&format!(
            "        - match: {{ prefix: /s{i} }}\n          service: s{i}\n"
        ));
    }
    s.push_str("services:\n");
    for i in 0..n {
        let deps: Vec<String> = (i + 1..(i + 3).min(n)).map(|d| format!("s{d}")).collect();
        let (hi, lo) = (i / 256, i % 256);
        let source = if i % 2 == 0 { "file" } else { "static" };
        s.push_str(&format!(
            "  - name: s{i}\n    port: 8000\n    instances: [{{ address: 10.{hi}.{lo}.1 }}, {{ address: 10.{hi}.{lo}.2 }}]\n    dependencies: [{}]\n    endpoints: {source}\n",
            deps.join(", ")
        ));
    }
    s
}
