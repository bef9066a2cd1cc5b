//! The filter's local copy of a header map, with exact name comparison.
//!
//! Envoy hands header names over in lower case and the filter lower-cases every configured name
//! at configure time, so names compare with `==` (a length check and a memcmp) instead of
//! [`filter_core::HeaderMap`]'s case-insensitive comparison, which dominated the per-request
//! cost of configurations with many operations. [`normalize`] lower-cases a map once after a
//! read, for hosts that do not.

use filter_core::HeaderMap;

/// Lower-cases every name that has an upper-case letter (none, from Envoy).
pub(crate) fn normalize(map: &mut HeaderMap) {
    for (k, _) in &mut map.pairs {
        if k.bytes().any(|b| b.is_ascii_uppercase()) {
            k.make_ascii_lowercase();
        }
    }
}

/// Exact-name operations on a header map whose names are lower case.
pub(crate) trait Local {
    /// The first value of `name`.
    fn lget(&self, name: &str) -> Option<&str>;
    /// Whether `name` is present.
    fn lcontains(&self, name: &str) -> bool;
    /// Every value of `name`, in order.
    fn lvalues<'m>(&'m self, name: &'m str) -> impl Iterator<Item = &'m str> + 'm;
    /// Replaces every value of `name` with `value` (in place of the first; appended if absent).
    fn lset(&mut self, name: &str, value: String);
    /// Adds one more value of `name`.
    fn ladd(&mut self, name: &str, value: String);
    /// Removes every value of `name`; whether there was one.
    fn lremove(&mut self, name: &str) -> bool;
}

impl Local for HeaderMap {
    fn lget(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn lcontains(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == name)
    }

    fn lvalues<'m>(&'m self, name: &'m str) -> impl Iterator<Item = &'m str> + 'm {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn lset(&mut self, name: &str, value: String) {
        match self.pairs.iter().position(|(k, _)| k == name) {
            Some(i) => {
                if let Some((_, v)) = self.pairs.get_mut(i) {
                    *v = value;
                }
                let later = i + 1;
                if self.pairs.iter().skip(later).any(|(k, _)| k == name) {
                    let mut at = 0;
                    self.pairs.retain(|(k, _)| {
                        at += 1;
                        at <= later || k != name
                    });
                }
            }
            None => self.pairs.push((name.to_owned(), value)),
        }
    }

    fn ladd(&mut self, name: &str, value: String) {
        self.pairs.push((name.to_owned(), value));
    }

    fn lremove(&mut self, name: &str) -> bool {
        let before = self.pairs.len();
        self.pairs.retain(|(k, _)| k != name);
        self.pairs.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn set_replaces_in_place_and_drops_later_values() {
        let mut m = HeaderMap::new(vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("a".into(), "3".into()),
        ]);
        m.lset("a", "x".into());
        assert_eq!(
            m.pairs,
            vec![("a".into(), "x".into()), ("b".into(), "2".into())]
        );
        m.lset("c", "y".into());
        assert_eq!(m.lget("c"), Some("y"));
        m.ladd("c", "z".into());
        assert_eq!(m.lvalues("c").collect::<Vec<_>>(), ["y", "z"]);
        assert!(m.lremove("c"));
        assert!(!m.lremove("c"));
        assert!(!m.lcontains("c"));
    }

    #[test]
    fn normalize_lowercases_names() {
        let mut m = HeaderMap::new(vec![("X-A".into(), "1".into())]);
        normalize(&mut m);
        assert_eq!(m.lget("x-a"), Some("1"));
    }
}
