//! The claims of a JWT, read from its payload without building a JSON tree.
//!
//! A cold token used to be parsed into a `serde_json::Value` (a `String` per key and value and a
//! `BTreeMap`), then searched claim by claim. Here the payload is split once into its top-level
//! members, each borrowed from the payload text as a [`RawValue`]; the registered claims are
//! read from those slices in place, and only what the configuration uses is kept after the
//! signature checks: the consumer, the subject, the forwarded claims' header values and the
//! claims that authorization rules look at ([`Verified`], cached with the token).
//!
//! Semantics are those of the `Value` path they replace: the payload must be one JSON object;
//! when a name repeats, the last member wins; a string is unescaped before use; numbers and
//! nested values are printed as `serde_json` prints a `Value`. Members the configuration never
//! reads are checked as JSON syntax but not decoded.

use std::borrow::Cow;
use std::fmt;
use std::rc::Rc;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::Reject;

/// The registered claims every provider reads, by slot.
const REGISTERED: [&str; 6] = ["iss", "sub", "aud", "exp", "nbf", "iat"];

fn registered(name: &str) -> Option<usize> {
    // A `match` (length, then bytes), not a search: this runs for every member of every token.
    Some(match name {
        "iss" => 0,
        "sub" => 1,
        "aud" => 2,
        "exp" => 3,
        "nbf" => 4,
        "iat" => 5,
        _ => return None,
    })
}

/// The top-level names a provider reads besides the registered claims (consumer, forwarded,
/// required and rule claims: first path segments), each once, registered ones left out.
pub(crate) fn wanted_names<'a>(firsts: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in firsts {
        if registered(n).is_none() && !out.iter().any(|o| o == n) {
            out.push(n.to_owned());
        }
    }
    out
}

/// The members of a claims object that a provider reads, borrowed from the payload text: one
/// slot per registered claim and per wanted name (no list of every member, no search).
pub(crate) struct Members<'p, 'w> {
    wanted: &'w [String],
    registered: [Option<&'p RawValue>; REGISTERED.len()],
    extra: Slots<'p>,
}

/// The wanted names' slots: in place for up to eight names.
enum Slots<'p> {
    Inline([Option<&'p RawValue>; 8]),
    Heap(Vec<Option<&'p RawValue>>),
}

impl<'p> Slots<'p> {
    fn new(n: usize) -> Self {
        if n <= 8 {
            Self::Inline([None; 8])
        } else {
            Self::Heap(vec![None; n])
        }
    }

    fn slot(&mut self, i: usize) -> Option<&mut Option<&'p RawValue>> {
        match self {
            Self::Inline(a) => a.get_mut(i),
            Self::Heap(v) => v.get_mut(i),
        }
    }

    fn get(&self, i: usize) -> Option<&'p RawValue> {
        match self {
            Self::Inline(a) => a.get(i).copied().flatten(),
            Self::Heap(v) => v.get(i).copied().flatten(),
        }
    }
}

/// A member name: borrowed unless it had escapes.
struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a claim name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Reads a claims object into [`Members`]: wanted members kept as raw slices (a repeated name:
/// the last), the others only checked as JSON.
struct MembersSeed<'w> {
    wanted: &'w [String],
}

impl<'de, 'w> DeserializeSeed<'de> for MembersSeed<'w> {
    type Value = Members<'de, 'w>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, 'w> Visitor<'de> for MembersSeed<'w> {
    type Value = Members<'de, 'w>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut m = Members {
            wanted: self.wanted,
            registered: [None; REGISTERED.len()],
            extra: Slots::new(self.wanted.len()),
        };
        while let Some(name) = map.next_key_seed(NameSeed)? {
            let slot = match registered(&name) {
                Some(i) => m.registered.get_mut(i),
                None => match self.wanted.iter().position(|w| *w == *name) {
                    Some(i) => m.extra.slot(i),
                    None => None,
                },
            };
            // Skipped as a raw slice too (the same code as a kept one: a smaller module).
            let raw = map.next_value::<&'de RawValue>()?;
            if let Some(slot) = slot {
                *slot = Some(raw);
            }
        }
        Ok(m)
    }
}

/// A claim found by path: a member as sent, or a nested value decoded to reach it.
pub(crate) enum Found<'p> {
    /// A top-level member, not decoded.
    Raw(&'p RawValue),
    /// A value inside a decoded member (`a.b` paths).
    Decoded(Value),
}

impl<'p, 'w> Members<'p, 'w> {
    /// Reads a payload (UTF-8 already checked) for the registered claims and `wanted` (from
    /// [`wanted_names`]); anything but one JSON object is malformed.
    pub(crate) fn parse(payload: &'p str, wanted: &'w [String]) -> Result<Self, Reject> {
        let mut de = serde_json::Deserializer::from_str(payload);
        let m = MembersSeed { wanted }
            .deserialize(&mut de)
            .map_err(|_| Reject::Malformed)?;
        de.end().map_err(|_| Reject::Malformed)?;
        Ok(m)
    }

    /// The member `name` (the last one when it repeats, as a JSON object map keeps it); `None`
    /// also for a name that is neither registered nor wanted.
    pub(crate) fn get(&self, name: &str) -> Option<&'p RawValue> {
        match registered(name) {
            Some(i) => self.registered.get(i).copied().flatten(),
            None => self
                .wanted
                .iter()
                .position(|w| w == name)
                .and_then(|i| self.extra.get(i)),
        }
    }

    /// The claim at `path` (`["org", "team"]` for `org.team`).
    pub(crate) fn find(&self, path: &[String]) -> Option<Found<'p>> {
        let (first, rest) = path.split_first()?;
        let raw = self.get(first)?;
        if rest.is_empty() {
            return Some(Found::Raw(raw));
        }
        let value = decode(raw)?;
        let mut at = &value;
        for k in rest {
            at = at.get(k.as_str())?;
        }
        Some(Found::Decoded(at.clone()))
    }

    /// The `iss`/`sub`-style string claim `name`; `None` when absent or not a string.
    pub(crate) fn str(&self, name: &str) -> Option<Cow<'p, str>> {
        self.get(name).and_then(raw_str)
    }
}

/// A member decoded (the one decoder instantiation every slow path shares: each distinct
/// `from_str` type is more code in the module).
fn decode(raw: &RawValue) -> Option<Value> {
    serde_json::from_str(raw.get()).ok()
}

/// A JSON string as text, borrowed when it has no escapes; `None` for any other JSON type.
pub(crate) fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        match decode(raw)? {
            Value::String(s) => Some(Cow::Owned(s)),
            _ => None,
        }
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// Whether the claim at this place is present and not `null`.
pub(crate) fn is_present(found: &Found<'_>) -> bool {
    match found {
        Found::Raw(raw) => raw.get() != "null",
        Found::Decoded(v) => !v.is_null(),
    }
}

/// A claim as header text: strings as they are, numbers and booleans printed, arrays of those
/// joined with `,`. Values with control characters are not forwarded.
pub(crate) fn text(found: &Found<'_>) -> Option<String> {
    match found {
        Found::Raw(raw) => match raw_str(raw) {
            Some(s) => (!s.bytes().any(|b| b.is_ascii_control())).then(|| s.into_owned()),
            None => decode(raw).and_then(|v| value_text(&v)),
        },
        Found::Decoded(v) => value_text(v),
    }
}

/// [`text`] of a decoded value.
pub(crate) fn value_text(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::Array(_) | Value::Object(_) => None,
                other => value_text(other),
            })
            .collect::<Option<Vec<_>>>()?
            .join(","),
        Value::Null | Value::Object(_) => return None,
    };
    (!s.bytes().any(|b| b.is_ascii_control())).then_some(s)
}

/// The number in the time claim `name` (`exp`, `nbf`, `iat`); `Err` when present but not a
/// number. Negative times are before the epoch (0); fractional seconds round down.
pub(crate) fn time(members: &Members<'_, '_>, name: &str) -> Result<Option<u64>, Reject> {
    let Some(raw) = members.get(name) else {
        return Ok(None);
    };
    // The common form, a non-negative integer of up to 19 digits, read in place.
    let text = raw.get().as_bytes();
    if !text.is_empty() && text.len() <= 19 && text.iter().all(u8::is_ascii_digit) {
        return Ok(Some(
            text.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
        ));
    }
    let Some(Value::Number(n)) = decode(raw) else {
        return Err(Reject::Malformed);
    };
    if let Some(u) = n.as_u64() {
        Ok(Some(u))
    } else if n.as_i64().is_some() {
        Ok(Some(0))
    } else {
        n.as_f64()
            .filter(|f| f.is_finite())
            .map(|f| Some(if f <= 0.0 { 0 } else { f as u64 }))
            .ok_or(Reject::Malformed)
    }
}

/// Whether `aud` (a string, or an array whose string elements count) names one of `audiences`.
pub(crate) fn audience_ok(members: &Members<'_, '_>, audiences: &[String]) -> bool {
    let Some(raw) = members.get("aud") else {
        return false;
    };
    let wanted = |a: &str| audiences.iter().any(|x| x == a);
    if let Some(a) = raw_str(raw) {
        return wanted(&a);
    }
    if !raw.get().starts_with('[') {
        return false;
    }
    match decode(raw) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(wanted),
        _ => false,
    }
}

/// What a verified token contributes to the request, computed once and cached with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The consumer claim's text (empty when the token has none).
    pub(crate) consumer: Rc<str>,
    /// `sub`, when it is a string.
    pub(crate) subject: Option<Rc<str>>,
    /// Per configured claim header, in order: its value, or `None` (the header is removed).
    pub(crate) forwarded: Box<[Option<Rc<str>>]>,
    /// The top-level claims that authorization rules read, decoded (only those).
    pub(crate) rule_claims: serde_json::Map<String, Value>,
}

impl Verified {
    /// The claim at `path` among those authorization rules read (`None` for any other claim:
    /// the filter keeps only what its configuration uses).
    pub fn rule_claim(&self, path: &[String]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        rest.iter()
            .try_fold(self.rule_claims.get(first.as_str())?, |v, k| {
                v.get(k.as_str())
            })
    }

    /// The consumer claim's text.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Builds what a provider keeps of a verified token: `consumer_claim`, `sub`, each of
    /// `forward` (claim paths) as header text, and the members named in `rule_names`.
    pub(crate) fn build<'f>(
        members: &Members<'_, '_>,
        consumer_claim: &[String],
        forward: impl IntoIterator<Item = &'f Vec<String>>,
        rule_names: &[String],
    ) -> Self {
        let subject: Option<Rc<str>> = members.str("sub").map(|s| Rc::from(&*s));
        let consumer: Rc<str> = match (consumer_claim, &subject) {
            ([only], Some(sub)) if only == "sub" => Rc::clone(sub),
            _ => members
                .find(consumer_claim)
                .and_then(|f| text(&f))
                .map_or_else(|| Rc::from(""), Rc::from),
        };
        let forwarded = forward
            .into_iter()
            .map(|path| members.find(path).and_then(|f| text(&f)).map(Rc::from))
            .collect();
        let mut rule_claims = serde_json::Map::new();
        for name in rule_names {
            if let Some(v) = members.get(name).and_then(decode) {
                rule_claims.insert(name.clone(), v);
            }
        }
        Self {
            consumer,
            subject,
            forwarded,
            rule_claims,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use serde_json::json;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_owned).collect()
    }

    /// Every reading of a payload agrees with what a `serde_json::Value` of the same payload
    /// gives: strings with and without escapes, numbers printed as `Value` prints them, arrays,
    /// nested paths, `null`, repeated names (the last wins), absent claims.
    #[test]
    fn readings_agree_with_a_value_of_the_same_payload() {
        let payloads = [
            r#"{"sub":"alice","org":{"team":"payments"},"n":1.50,"b":true,"a":["x",2,false]}"#,
            r#"{"sub":"ali\u0063e","sub":"bob","esc":"tab\there","nul":null,"big":12345678901234567890}"#,
            r#"{ "sub" : "x" , "deep" : {"a":{"b":[1,{"c":2}]}}, "neg": -3, "e": 1e2 }"#,
            r#"{"s\u0075b":"escaped-name","obj":{"k":"v"},"arr":[["nested"]]}"#,
        ];
        let names = [
            "sub",
            "org",
            "org.team",
            "n",
            "b",
            "a",
            "esc",
            "nul",
            "big",
            "deep.a",
            "deep.a.b",
            "neg",
            "e",
            "obj",
            "arr",
            "missing",
            "org.missing",
        ];
        let firsts: Vec<&str> = names.iter().map(|n| n.split('.').next().unwrap()).collect();
        let wanted = wanted_names(firsts);
        for p in payloads {
            let m = Members::parse(p, &wanted).unwrap();
            let v: Value = serde_json::from_str(p).unwrap();
            for name in names {
                let want = path(name).iter().try_fold(&v, |v, k| v.get(k.as_str()));
                let got = m.find(&path(name));
                assert_eq!(got.is_some(), want.is_some(), "{p} {name} presence");
                if let (Some(got), Some(want)) = (got, want) {
                    assert_eq!(text(&got), value_text(want), "{p} {name} text");
                    assert_eq!(is_present(&got), !want.is_null(), "{p} {name} null");
                }
            }
            assert_eq!(
                m.str("sub").as_deref(),
                v.get("sub").and_then(Value::as_str),
                "{p} sub"
            );
        }
    }

    #[test]
    fn registered_slots_match_their_names() {
        for (i, name) in REGISTERED.iter().enumerate() {
            assert_eq!(registered(name), Some(i));
        }
        assert_eq!(registered("jti"), None);
        assert_eq!(registered("is"), None);
    }

    #[test]
    fn only_one_json_object_is_a_claims_set() {
        for bad in ["[]", "\"x\"", "1", "null", "{", r#"{"a":}"#, r#"{"a":1} x"#] {
            assert!(Members::parse(bad, &[]).is_err(), "{bad}");
        }
        assert!(Members::parse("{}", &[]).is_ok());
    }

    #[test]
    fn time_claims_read_as_numeric_dates() {
        // 1e400 is out of f64 range: a time claim of it is malformed (as a `Value` parse of
        // the payload says); in a member nobody reads it is only checked as JSON syntax.
        let m = Members::parse(r#"{"exp":1e400,"unread":1e400}"#, &[]).unwrap();
        assert_eq!(time(&m, "exp"), Err(Reject::Malformed));
        assert!(serde_json::from_str::<Value>(r#"{"exp":1e400}"#).is_err());
        let wanted = wanted_names(["s", "z"]);
        let m = Members::parse(
            r#"{"exp":1700000000,"nbf":-5,"iat":12.9,"s":"1","z":null}"#,
            &wanted,
        )
        .unwrap();
        assert_eq!(time(&m, "exp"), Ok(Some(1_700_000_000)));
        assert_eq!(time(&m, "nbf"), Ok(Some(0)));
        assert_eq!(time(&m, "iat"), Ok(Some(12)));
        assert_eq!(time(&m, "none"), Ok(None));
        assert_eq!(time(&m, "s"), Err(Reject::Malformed));
        assert_eq!(time(&m, "z"), Err(Reject::Malformed));
        // The in-place integer path agrees with the `Value` reading at and past its bounds.
        let by_value = |text: &str| -> Option<u64> {
            let v: Value = serde_json::from_str(text).ok()?;
            let n = v.as_number()?;
            n.as_u64()
                .or_else(|| n.as_i64().map(|_| 0))
                .or_else(|| n.as_f64().map(|f| if f <= 0.0 { 0 } else { f as u64 }))
        };
        for text in [
            "0",
            "7",
            "1700000000",
            "9999999999999999999",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
            "-0",
            "-9223372036854775809",
            "0.5",
            "1E3",
        ] {
            let payload = format!(r#"{{"exp":{text}}}"#);
            let m = Members::parse(&payload, &[]).unwrap();
            assert_eq!(time(&m, "exp"), Ok(by_value(text)), "{text}");
        }
    }

    #[test]
    fn audience_is_a_string_or_an_array_of_strings() {
        let auds = ["api".to_owned(), "web".to_owned()];
        let ok = |p: &str| audience_ok(&Members::parse(p, &[]).unwrap(), &auds);
        assert!(ok(r#"{"aud":"api"}"#));
        assert!(ok(r#"{"aud":"\u0061pi"}"#));
        assert!(ok(r#"{"aud":[1,"other","web"]}"#));
        assert!(!ok(r#"{"aud":["other",{"api":1}]}"#));
        assert!(!ok(r#"{"aud":{"api":true}}"#));
        assert!(!ok(r#"{"aud":null}"#));
        assert!(!ok(r#"{}"#));
    }

    #[test]
    fn verified_keeps_what_the_configuration_uses() {
        let payload = json!({"sub": "alice", "org": {"team": "payments"}, "scope": "a b",
                             "n": 7, "ctl": "x\ny", "unused": {"big": [1, 2, 3]}})
        .to_string();
        let wanted = wanted_names(["org", "n", "missing", "ctl", "scope", "absent", "nope"]);
        let m = Members::parse(&payload, &wanted).unwrap();
        let v = Verified::build(
            &m,
            &path("org.team"),
            &[path("n"), path("missing"), path("ctl")],
            &["scope".to_owned(), "absent".to_owned()],
        );
        assert_eq!(v.consumer(), "payments");
        assert_eq!(v.subject.as_deref(), Some("alice"));
        assert_eq!(&*v.forwarded, &[Some(Rc::from("7")), None, None]);
        assert_eq!(v.rule_claim(&path("scope")), Some(&json!("a b")));
        assert_eq!(v.rule_claim(&path("unused")), None);
        assert_eq!(v.rule_claims.len(), 1);
        // The default consumer claim shares the subject's text.
        let v = Verified::build(&m, &path("sub"), &[], &[]);
        assert!(Rc::ptr_eq(&v.consumer, v.subject.as_ref().unwrap()));
        // No consumer claim in the token: the consumer is empty.
        let v = Verified::build(&m, &path("nope"), &[], &[]);
        assert_eq!(v.consumer(), "");
    }
}
