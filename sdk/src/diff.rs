//! What `gen` would change: added, removed and changed files, with a line diff of changes.

use std::fmt::Write;
use std::path::Path;

use crate::generate::Files;

/// A readable diff between the files under `root` and `files`; empty when nothing changes.
pub fn diff(root: &Path, files: &Files) -> String {
    let mut out = String::new();
    for (rel, new) in files {
        match std::fs::read_to_string(root.join(rel)) {
            Err(_) => {
                let _ = writeln!(out, "added   {rel} ({} lines)", new.lines().count());
            }
            Ok(old) if &old == new => {}
            Ok(old) => {
                let _ = writeln!(out, "changed {rel}");
                out.push_str(&lines(&old, new));
            }
        }
    }
    let dir = root.join("envoy-configs");
    let mut stale = Vec::new();
    collect(&dir, root, &mut stale);
    for rel in stale.into_iter().filter(|r| !files.contains_key(r)) {
        let _ = writeln!(out, "removed {rel}");
    }
    out
}

fn collect(dir: &Path, root: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, root, out);
        } else if let (true, Ok(rel)) = (
            p.extension().is_some_and(|e| e == "yaml"),
            p.strip_prefix(root),
        ) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// A minimal line diff (longest common subsequence): `-` old lines, `+` new lines.
fn lines(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a.len().saturating_mul(b.len()) > 4_000_000 {
        return format!(
            "  ({} lines -> {} lines; too large to diff line by line)\n",
            a.len(),
            b.len()
        );
    }
    // lcs[i * w + j] = length of the longest common subsequence of a[i..] and b[j..].
    let w = b.len() + 1;
    let mut lcs = vec![0u32; (a.len() + 1) * w];
    let at = |lcs: &[u32], i: usize, j: usize| lcs.get(i * w + j).copied().unwrap_or(0);
    for (i, la) in a.iter().enumerate().rev() {
        for (j, lb) in b.iter().enumerate().rev() {
            let v = if la == lb {
                at(&lcs, i + 1, j + 1) + 1
            } else {
                at(&lcs, i + 1, j).max(at(&lcs, i, j + 1))
            };
            if let Some(cell) = lcs.get_mut(i * w + j) {
                *cell = v;
            }
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    loop {
        match (a.get(i), b.get(j)) {
            (Some(la), Some(lb)) if la == lb => {
                i += 1;
                j += 1;
            }
            (Some(la), lb) if lb.is_none() || at(&lcs, i + 1, j) >= at(&lcs, i, j + 1) => {
                let _ = writeln!(out, "  - {la}");
                i += 1;
            }
            (_, Some(lb)) => {
                let _ = writeln!(out, "  + {lb}");
                j += 1;
            }
            (None, None) => break,
            // Unreachable: (Some, None) is taken by the removal arm.
            (Some(_), None) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_diff_shows_removed_and_added() {
        assert_eq!(lines("a\nb\nc\n", "a\nx\nc\n"), "  - b\n  + x\n");
        assert_eq!(lines("a\n", "a\n"), "");
    }
}
