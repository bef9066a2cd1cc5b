//! Why a request is refused: one stable code per reason, used in the JSON body and in stats.

/// A refusal reason. [`Reject::code`] is the stable, documented error code clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// No credential the rule accepts was sent.
    Missing,
    /// The token is not a well-formed compact JWS with JSON header and claims.
    Malformed,
    /// The token exceeds the configured size cap.
    TokenTooLarge,
    /// `alg` is `none` or not supported, or does not fit the key.
    AlgNotAllowed,
    /// The header carries a `crit` (or `b64`) extension this filter does not understand.
    CritUnsupported,
    /// No key matches the token's `kid` and algorithm.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iat` is in the future, or `exp - iat` exceeds the configured maximum lifetime.
    BadIssuedAt,
    /// A required claim is missing.
    MissingClaim,
    /// `iss` is not the provider's issuer.
    WrongIssuer,
    /// No audience of the token is accepted.
    WrongAudience,
    /// The provider's remote keys could not be fetched.
    KeysUnavailable,
    /// The API key is not known.
    InvalidApiKey,
    /// The Basic credentials are wrong or malformed.
    InvalidBasic,
    /// Authenticated, but the rule's authorization denies the call (403).
    Forbidden,
    /// No rule matches the request (403, fail closed).
    NoRule,
    /// The per-worker verification budget is spent (503 with `Retry-After`, no crypto ran).
    OverBudget,
}

impl Reject {
    /// Every reason, for defining one counter each.
    pub const ALL: [Reject; 19] = [
        Self::Missing,
        Self::Malformed,
        Self::TokenTooLarge,
        Self::AlgNotAllowed,
        Self::CritUnsupported,
        Self::UnknownKey,
        Self::BadSignature,
        Self::Expired,
        Self::NotYetValid,
        Self::BadIssuedAt,
        Self::MissingClaim,
        Self::WrongIssuer,
        Self::WrongAudience,
        Self::KeysUnavailable,
        Self::InvalidApiKey,
        Self::InvalidBasic,
        Self::Forbidden,
        Self::NoRule,
        Self::OverBudget,
    ];

    /// The stable error code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_credentials",
            Self::Malformed => "token_malformed",
            Self::TokenTooLarge => "token_too_large",
            Self::AlgNotAllowed => "alg_not_allowed",
            Self::CritUnsupported => "crit_unsupported",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::BadIssuedAt => "token_bad_iat",
            Self::MissingClaim => "missing_claim",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::KeysUnavailable => "keys_unavailable",
            Self::InvalidApiKey => "invalid_api_key",
            Self::InvalidBasic => "invalid_basic_credentials",
            Self::Forbidden => "forbidden",
            Self::NoRule => "no_matching_rule",
            Self::OverBudget => "verification_budget_exhausted",
        }
    }

    /// The HTTP status: 403 for authorization, 401 otherwise.
    pub fn status(self) -> u16 {
        match self {
            Self::Forbidden | Self::NoRule => 403,
            Self::OverBudget => 503,
            _ => 401,
        }
    }

    /// Whether the reason concerns a JWT (the `Bearer` challenge then carries
    /// `error="invalid_token"`).
    pub fn is_token_error(self) -> bool {
        !matches!(
            self,
            Self::Missing
                | Self::InvalidApiKey
                | Self::InvalidBasic
                | Self::Forbidden
                | Self::NoRule
        )
    }
}
