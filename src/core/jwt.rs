//! `--auth-token` as etcd 3.4 reads it, and JWT auth tokens (etcd's `tokenJWT`).
//!
//! The option string is `TYPE[,NAME=VALUE...]`. `simple` selects the member-local simple
//! tokens of [`crate::core::token`]; `jwt` selects signed tokens with the options
//! `sign-method` (required), `pub-key` and `priv-key` (PEM files) and `ttl` (a Go
//! duration, 5 minutes by default); an empty type selects etcd's "nop" provider, which
//! accepts no token and issues none. Errors are etcd's own strings.
//!
//! A JWT is `base64url(header).base64url(claims).base64url(signature)` with the header
//! `{"alg":METHOD,"typ":"JWT"}` and the claims `{"exp":UNIX_S,"revision":N,"username":U}`,
//! the JSON keys sorted as Go writes them. `revision` is the auth revision when the token
//! was issued: a request carrying a token from before any later auth change fails with
//! "revision of auth store is old" (clients then authenticate again), which is how a
//! deleted user's or a changed password's tokens stop working, exactly as in etcd 3.4.
//!
//! Pure: key files are read through a closure the caller passes, the current time is an
//! argument, and signing takes the caller's random generator.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, Pss, RsaPrivateKey, RsaPublicKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// etcd's default JWT lifetime when `ttl` is not given.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);

/// etcd's `ErrInvalidAuthOpts`.
pub const ERR_INVALID_AUTH_OPTS: &str = "auth: invalid auth options";
/// etcd's `ErrMissingKey`.
pub const ERR_MISSING_KEY: &str = "auth: missing key data";
/// etcd's `ErrKeyMismatch`.
pub const ERR_KEY_MISMATCH: &str = "auth: public and private keys don't match";
/// etcd's `ErrVerifyOnly`: Authenticate on a member that holds only the public key.
pub const ERR_VERIFY_ONLY: &str = "auth: token signing attempted with verify-only key";
/// The JWT library's `ErrInvalidKey`: the key cannot sign with the chosen method (an EC
/// key on another curve than the method's).
pub const ERR_INVALID_KEY: &str = "key is invalid";

const ERR_NOT_PEM: &str = "invalid key: Key must be a PEM encoded PKCS1 or PKCS8 key";
const ERR_NOT_RSA_PRIVATE: &str = "key is not a valid RSA private key";
const ERR_NOT_RSA_PUBLIC: &str = "key is not a valid RSA public key";
const ERR_NOT_EC_PRIVATE: &str = "key is not a valid ECDSA private key";
const ERR_NOT_EC_PUBLIC: &str = "key is not a valid ECDSA public key";
const ERR_MALFORMED_CERT: &str = "x509: malformed tbs certificate";
const ERR_EC_HINT: &str =
    "x509: failed to parse private key (use ParseECPrivateKey instead for this key format)";
const ERR_PKCS1_HINT: &str =
    "x509: failed to parse private key (use ParsePKCS1PrivateKey instead for this key format)";

/// The known JWT option names; others are warned about and ignored, as etcd does.
const KNOWN_JWT_OPTIONS: [&str; 4] = ["sign-method", "pub-key", "priv-key", "ttl"];

/// The token provider `--auth-token` selects; etcd's default is simple tokens.
#[derive(Debug, Clone, Default)]
pub enum TokenProvider {
    /// Member-local random tokens (`simple`).
    #[default]
    Simple,
    /// Signed JSON Web Tokens (`jwt,...`).
    Jwt(Box<JwtTokens>),
    /// etcd's provider for an empty type: no token is valid and Authenticate fails.
    Nop,
}

/// Splits `--auth-token` as etcd's `decomposeOpts` does: the type before the first comma,
/// then `name=value` pairs; a pair without exactly one `=`, or a repeated name, is
/// "invalid auth options".
pub fn decompose_options(options: &str) -> Result<(String, BTreeMap<String, String>), String> {
    let mut parts = options.split(',');
    let token_type = parts.next().unwrap_or("").to_string();
    let mut map = BTreeMap::new();
    for part in parts {
        let pair: Vec<&str> = part.split('=').collect();
        let [name, value] = pair[..] else {
            return Err(ERR_INVALID_AUTH_OPTS.into());
        };
        if map.insert(name.to_string(), value.to_string()).is_some() {
            return Err(ERR_INVALID_AUTH_OPTS.into());
        }
    }
    Ok((token_type, map))
}

/// Builds the provider `--auth-token` names, as etcd's `NewTokenProvider`: the error is
/// the message etcd stops with; the warnings are what etcd logs while starting.
/// `read_file` reads a key file (the path as given).
pub fn token_provider(
    options: &str,
    read_file: &mut dyn FnMut(&str) -> std::io::Result<Vec<u8>>,
) -> Result<(TokenProvider, Vec<String>), String> {
    let (token_type, map) = decompose_options(options)?;
    match token_type.as_str() {
        "simple" => Ok((
            TokenProvider::Simple,
            vec!["simple token is not cryptographically signed".into()],
        )),
        "jwt" => {
            let unknown: Vec<&str> = map
                .keys()
                .map(String::as_str)
                .filter(|k| !KNOWN_JWT_OPTIONS.contains(k))
                .collect();
            let jwt = JwtTokens::from_options(&map, read_file)?;
            let warnings = if unknown.is_empty() {
                vec![]
            } else {
                vec![format!("unknown JWT options: {unknown:?}")]
            };
            Ok((TokenProvider::Jwt(Box::new(jwt)), warnings))
        }
        "" => Ok((TokenProvider::Nop, vec![])),
        _ => Err(ERR_INVALID_AUTH_OPTS.into()),
    }
}

/// A JWS signature algorithm etcd 3.4 accepts for `sign-method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignMethod {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// ECDSA on P-521 with SHA-512.
    Es512,
    /// HMAC with SHA-256 (the key is the `priv-key` file's bytes).
    Hs256,
    /// HMAC with SHA-384.
    Hs384,
    /// HMAC with SHA-512.
    Hs512,
}

/// The family of a [`SignMethod`], which decides the key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    RsaPss,
    Ecdsa(Curve),
    Hmac,
}

/// The hash a [`SignMethod`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// An elliptic curve of the ECDSA methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    /// The length of one signature half (r or s) in bytes.
    fn scalar_len_bytes(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
}

impl SignMethod {
    /// The method named `name` (the JWS `alg`), as the JWT library registers them.
    pub fn from_name(name: &str) -> Option<SignMethod> {
        Some(match name {
            "RS256" => SignMethod::Rs256,
            "RS384" => SignMethod::Rs384,
            "RS512" => SignMethod::Rs512,
            "PS256" => SignMethod::Ps256,
            "PS384" => SignMethod::Ps384,
            "PS512" => SignMethod::Ps512,
            "ES256" => SignMethod::Es256,
            "ES384" => SignMethod::Es384,
            "ES512" => SignMethod::Es512,
            "HS256" => SignMethod::Hs256,
            "HS384" => SignMethod::Hs384,
            "HS512" => SignMethod::Hs512,
            _ => return None,
        })
    }

    /// The JWS `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            SignMethod::Rs256 => "RS256",
            SignMethod::Rs384 => "RS384",
            SignMethod::Rs512 => "RS512",
            SignMethod::Ps256 => "PS256",
            SignMethod::Ps384 => "PS384",
            SignMethod::Ps512 => "PS512",
            SignMethod::Es256 => "ES256",
            SignMethod::Es384 => "ES384",
            SignMethod::Es512 => "ES512",
            SignMethod::Hs256 => "HS256",
            SignMethod::Hs384 => "HS384",
            SignMethod::Hs512 => "HS512",
        }
    }

    fn family(self) -> Family {
        use SignMethod::*;
        match self {
            Rs256 | Rs384 | Rs512 => Family::Rsa,
            Ps256 | Ps384 | Ps512 => Family::RsaPss,
            Es256 => Family::Ecdsa(Curve::P256),
            Es384 => Family::Ecdsa(Curve::P384),
            Es512 => Family::Ecdsa(Curve::P521),
            Hs256 | Hs384 | Hs512 => Family::Hmac,
        }
    }

    fn hash(self) -> Hash {
        use SignMethod::*;
        match self {
            Rs256 | Ps256 | Es256 | Hs256 => Hash::Sha256,
            Rs384 | Ps384 | Es384 | Hs384 => Hash::Sha384,
            Rs512 | Ps512 | Es512 | Hs512 => Hash::Sha512,
        }
    }
}

/// Method names the JWT library knows but etcd 3.4 cannot build a key for: etcd starts
/// with "unsupported signing method" and the Go type name.
fn unsupported_method_type(name: &str) -> Option<&'static str> {
    match name {
        "EdDSA" => Some("*jwt.SigningMethodEd25519"),
        "none" => Some("*jwt.signingMethodNone"),
        _ => None,
    }
}

/// An EC private key on one of the supported curves.
#[derive(Debug, Clone)]
enum EcSecret {
    P256(p256::SecretKey),
    P384(p384::SecretKey),
    P521(p521::SecretKey),
}

/// An EC public key on one of the supported curves.
#[derive(Debug, Clone, PartialEq)]
enum EcPublic {
    P256(p256::PublicKey),
    P384(p384::PublicKey),
    P521(p521::PublicKey),
}

impl EcSecret {
    fn public(&self) -> EcPublic {
        match self {
            EcSecret::P256(k) => EcPublic::P256(k.public_key()),
            EcSecret::P384(k) => EcPublic::P384(k.public_key()),
            EcSecret::P521(k) => EcPublic::P521(k.public_key()),
        }
    }
}

impl EcPublic {
    fn curve(&self) -> Curve {
        match self {
            EcPublic::P256(_) => Curve::P256,
            EcPublic::P384(_) => Curve::P384,
            EcPublic::P521(_) => Curve::P521,
        }
    }

    /// The SEC1 uncompressed point: `04 || x || y`.
    fn point_bytes(&self) -> Vec<u8> {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        match self {
            EcPublic::P256(k) => k.to_encoded_point(false).as_bytes().to_vec(),
            EcPublic::P384(k) => k.to_encoded_point(false).as_bytes().to_vec(),
            EcPublic::P521(k) => k.to_encoded_point(false).as_bytes().to_vec(),
        }
    }
}

/// The key a [`JwtTokens`] signs or verifies with.
#[derive(Debug, Clone)]
enum Key {
    RsaPrivate(Box<RsaPrivateKey>),
    RsaPublic(Box<RsaPublicKey>),
    EcPrivate(EcSecret),
    EcPublic(EcPublic),
    Hmac(Vec<u8>),
}

/// What a valid token says: who it stands for and the auth revision it was issued at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaims {
    /// The user.
    pub username: String,
    /// The auth revision when the token was issued.
    pub revision: u64,
}

/// etcd's JWT token provider: the sign method, the key, and the tokens' lifetime.
#[derive(Debug, Clone)]
pub struct JwtTokens {
    method: SignMethod,
    key: Key,
    ttl_ms: i64,
}

impl JwtTokens {
    /// Builds the provider from the `jwt` options, as etcd's `newTokenProviderJWT`:
    /// `ttl`, the key files and `sign-method` are read first (any failure there is
    /// "invalid auth options"), then the keys are parsed for the method. With only
    /// `pub-key` (RSA or EC) the provider verifies tokens but cannot issue them.
    pub fn from_options(
        options: &BTreeMap<String, String>,
        read_file: &mut dyn FnMut(&str) -> std::io::Result<Vec<u8>>,
    ) -> Result<JwtTokens, String> {
        let get = |name: &str| options.get(name).map(String::as_str).unwrap_or("");
        let invalid = || ERR_INVALID_AUTH_OPTS.to_string();
        let ttl_ms = match get("ttl") {
            "" => DEFAULT_JWT_TTL.as_millis() as i64,
            ttl => parse_signed_go_duration_ms(ttl).ok_or_else(invalid)?,
        };
        let mut read = |name: &str| match get(name) {
            "" => Ok(Vec::new()),
            path => read_file(path).map_err(|_| invalid()),
        };
        let public_pem = read("pub-key")?;
        let private_pem = read("priv-key")?;
        let method_name = get("sign-method");
        if let Some(go_type) = unsupported_method_type(method_name) {
            return Err(format!("unsupported signing method: {go_type}"));
        }
        let method = SignMethod::from_name(method_name).ok_or_else(invalid)?;
        let key = match method.family() {
            Family::Rsa | Family::RsaPss => rsa_key(&public_pem, &private_pem)?,
            Family::Ecdsa(_) => ec_key(&public_pem, &private_pem)?,
            Family::Hmac if private_pem.is_empty() => return Err(ERR_MISSING_KEY.into()),
            Family::Hmac => Key::Hmac(private_pem),
        };
        Ok(JwtTokens {
            method,
            key,
            ttl_ms,
        })
    }

    /// The sign method.
    pub fn method(&self) -> SignMethod {
        self.method
    }

    /// How long an issued token stays valid, in milliseconds (negative when the `ttl`
    /// option was, which makes every token expired at once, as in etcd).
    pub fn ttl_ms(&self) -> i64 {
        self.ttl_ms
    }

    /// Whether only a public key was given, so tokens are verified but never issued.
    pub fn is_verify_only(&self) -> bool {
        matches!(self.key, Key::RsaPublic(_) | Key::EcPublic(_))
    }

    /// Issues a token for `username` at auth `revision`, expiring `ttl` after `now_ms`
    /// (milliseconds since the Unix epoch). `rng` blinds RSA signatures and salts PSS.
    pub fn sign<R: RngCore + CryptoRng>(
        &self,
        username: &str,
        revision: u64,
        now_ms: i64,
        rng: &mut R,
    ) -> Result<String, String> {
        if self.is_verify_only() {
            return Err(ERR_VERIFY_ONLY.into());
        }
        // Go's time.Unix() rounds toward negative infinity.
        let exp_s = now_ms.saturating_add(self.ttl_ms).div_euclid(1000);
        let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, self.method.name());
        let claims = format!(
            r#"{{"exp":{exp_s},"revision":{revision},"username":{}}}"#,
            crate::gojson::string(username)
        );
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = self.signature(signing_input.as_bytes(), rng)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    fn signature<R: RngCore + CryptoRng>(
        &self,
        message: &[u8],
        rng: &mut R,
    ) -> Result<Vec<u8>, String> {
        let hash = self.method.hash();
        match (&self.key, self.method.family()) {
            (Key::RsaPrivate(k), Family::Rsa) => k
                .sign_with_rng(rng, pkcs1v15(hash), &digest(hash, message))
                .map_err(|e| e.to_string()),
            (Key::RsaPrivate(k), Family::RsaPss) => k
                .sign_with_rng(rng, pss_blinded(hash), &digest(hash, message))
                .map_err(|e| e.to_string()),
            (Key::EcPrivate(k), Family::Ecdsa(curve)) => ec_sign(k, curve, message),
            (Key::Hmac(secret), Family::Hmac) => Ok(hmac_tag(hash, secret, message)),
            _ => Err(ERR_INVALID_KEY.into()),
        }
    }

    /// The claims of `token` if it is valid at `now_ms`: three base64url segments, the
    /// configured `alg`, a good signature, and `exp`/`iat`/`nbf` (when present) admitting
    /// `now`. A token whose `username` is not a string or whose `revision` is not a number
    /// is refused (etcd 3.4 would crash on it).
    pub fn verify(&self, token: &str, now_ms: i64) -> Option<JwtClaims> {
        let mut segments = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return None;
        };
        let header: Map<String, Value> =
            serde_json::from_slice(&decode_segment(header_b64)?).ok()?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&decode_segment(claims_b64)?).ok()?;
        if header.get("alg").and_then(Value::as_str) != Some(self.method.name()) {
            return None;
        }
        let now_s = now_ms.div_euclid(1000);
        if !time_claims_valid(&claims, now_s) {
            return None;
        }
        let signature = decode_segment(signature_b64)?;
        let signing_input = &token[..header_b64.len() + 1 + claims_b64.len()];
        if !self.signature_valid(signing_input.as_bytes(), &signature) {
            return None;
        }
        let username = claims.get("username")?.as_str()?.to_string();
        let revision = claims.get("revision")?.as_f64()?;
        Some(JwtClaims {
            username,
            // Go converts the JSON number (a float64) to uint64 the same way.
            revision: revision as u64,
        })
    }

    fn signature_valid(&self, message: &[u8], signature: &[u8]) -> bool {
        let hash = self.method.hash();
        let rsa_public = match &self.key {
            Key::RsaPrivate(k) => Some(k.to_public_key()),
            Key::RsaPublic(k) => Some((**k).clone()),
            _ => None,
        };
        let ec_public = match &self.key {
            Key::EcPrivate(k) => Some(k.public()),
            Key::EcPublic(k) => Some(k.clone()),
            _ => None,
        };
        match self.method.family() {
            Family::Rsa => rsa_public.is_some_and(|k| {
                k.verify(pkcs1v15(hash), &digest(hash, message), signature)
                    .is_ok()
            }),
            Family::RsaPss => rsa_public.is_some_and(|k| {
                k.verify(pss(hash), &digest(hash, message), signature)
                    .is_ok()
            }),
            Family::Ecdsa(curve) => {
                ec_public.is_some_and(|k| ec_verify(&k, curve, message, signature))
            }
            Family::Hmac => match &self.key {
                Key::Hmac(secret) => hmac_verify(hash, secret, message, signature),
                _ => false,
            },
        }
    }
}

/// Go's `time.ParseDuration` in milliseconds, sign included (etcd keeps a negative TTL,
/// which issues tokens that have already expired).
fn parse_signed_go_duration_ms(s: &str) -> Option<i64> {
    let (negative, magnitude) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    // The shared parser takes the sign itself; a second sign is malformed.
    if negative && (magnitude.starts_with('-') || magnitude.starts_with('+')) {
        return None;
    }
    let d = crate::config::parse_go_duration(magnitude).ok()?;
    let ms = i64::try_from(d.as_millis()).ok()?;
    Some(if negative { -ms } else { ms })
}

/// Decodes a token segment as the JWT library does: base64url, padding optional.
fn decode_segment(segment: &str) -> Option<Vec<u8>> {
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    ENGINE.decode(segment).ok()
}

/// The JWT library's `MapClaims.Valid` for the time claims, none of which is required:
/// `exp` (0 counts as absent) must not be before `now`, `iat` and `nbf` not after it. A
/// time claim that is not a number makes the token invalid.
fn time_claims_valid(claims: &Map<String, Value>, now_s: i64) -> bool {
    let get = |name: &str| -> Result<Option<i64>, ()> {
        match claims.get(name) {
            None => Ok(None),
            // Go converts the float64 to int64, truncating toward zero.
            Some(v) => v.as_f64().map(|f| Some(f as i64)).ok_or(()),
        }
    };
    let (Ok(exp), Ok(iat), Ok(nbf)) = (get("exp"), get("iat"), get("nbf")) else {
        return false;
    };
    exp.is_none_or(|exp| exp == 0 || now_s <= exp)
        && iat.is_none_or(|iat| iat == 0 || now_s >= iat)
        && nbf.is_none_or(|nbf| nbf == 0 || now_s >= nbf)
}

fn digest(hash: Hash, message: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha256 => Sha256::digest(message).to_vec(),
        Hash::Sha384 => Sha384::digest(message).to_vec(),
        Hash::Sha512 => Sha512::digest(message).to_vec(),
    }
}

fn pkcs1v15(hash: Hash) -> Pkcs1v15Sign {
    match hash {
        Hash::Sha256 => Pkcs1v15Sign::new::<Sha256>(),
        Hash::Sha384 => Pkcs1v15Sign::new::<Sha384>(),
        Hash::Sha512 => Pkcs1v15Sign::new::<Sha512>(),
    }
}

/// PSS with a salt as long as the hash, which the JWT library signs with.
fn pss(hash: Hash) -> Pss {
    match hash {
        Hash::Sha256 => Pss::new::<Sha256>(),
        Hash::Sha384 => Pss::new::<Sha384>(),
        Hash::Sha512 => Pss::new::<Sha512>(),
    }
}

fn pss_blinded(hash: Hash) -> Pss {
    match hash {
        Hash::Sha256 => Pss::new_blinded::<Sha256>(),
        Hash::Sha384 => Pss::new_blinded::<Sha384>(),
        Hash::Sha512 => Pss::new_blinded::<Sha512>(),
    }
}

fn hmac_tag(hash: Hash, secret: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length, so new_from_slice cannot fail.
    fn tag<M: Mac + hmac::digest::KeyInit>(secret: &[u8], message: &[u8]) -> Vec<u8> {
        match <M as hmac::digest::KeyInit>::new_from_slice(secret) {
            Ok(mut mac) => {
                mac.update(message);
                mac.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }
    match hash {
        Hash::Sha256 => tag::<Hmac<Sha256>>(secret, message),
        Hash::Sha384 => tag::<Hmac<Sha384>>(secret, message),
        Hash::Sha512 => tag::<Hmac<Sha512>>(secret, message),
    }
}

fn hmac_verify(hash: Hash, secret: &[u8], message: &[u8], tag: &[u8]) -> bool {
    fn check<M: Mac + hmac::digest::KeyInit>(secret: &[u8], message: &[u8], tag: &[u8]) -> bool {
        match <M as hmac::digest::KeyInit>::new_from_slice(secret) {
            Ok(mut mac) => {
                mac.update(message);
                // A constant-time comparison.
                mac.verify_slice(tag).is_ok()
            }
            Err(_) => false,
        }
    }
    match hash {
        Hash::Sha256 => check::<Hmac<Sha256>>(secret, message, tag),
        Hash::Sha384 => check::<Hmac<Sha384>>(secret, message, tag),
        Hash::Sha512 => check::<Hmac<Sha512>>(secret, message, tag),
    }
}

/// Signs with the method's curve and hash; a key on another curve is the JWT library's
/// "key is invalid".
fn ec_sign(key: &EcSecret, curve: Curve, message: &[u8]) -> Result<Vec<u8>, String> {
    use p256::ecdsa::signature::Signer;
    match (key, curve) {
        (EcSecret::P256(k), Curve::P256) => {
            let s: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(k).sign(message);
            Ok(s.to_bytes().to_vec())
        }
        (EcSecret::P384(k), Curve::P384) => {
            let s: p384::ecdsa::Signature = p384::ecdsa::SigningKey::from(k).sign(message);
            Ok(s.to_bytes().to_vec())
        }
        (EcSecret::P521(k), Curve::P521) => {
            let signing = p521::ecdsa::SigningKey::from_bytes(&k.to_bytes())
                .map_err(|_| ERR_INVALID_KEY.to_string())?;
            let s: p521::ecdsa::Signature = signing.sign(message);
            Ok(s.to_bytes().to_vec())
        }
        _ => Err(ERR_INVALID_KEY.into()),
    }
}

/// Verifies an `r || s` signature of exactly twice the curve's scalar length.
fn ec_verify(key: &EcPublic, curve: Curve, message: &[u8], signature: &[u8]) -> bool {
    use p256::ecdsa::signature::Verifier;
    if key.curve() != curve || signature.len() != 2 * curve.scalar_len_bytes() {
        return false;
    }
    match key {
        EcPublic::P256(k) => p256::ecdsa::Signature::from_slice(signature).is_ok_and(|s| {
            p256::ecdsa::VerifyingKey::from(k)
                .verify(message, &s)
                .is_ok()
        }),
        EcPublic::P384(k) => p384::ecdsa::Signature::from_slice(signature).is_ok_and(|s| {
            p384::ecdsa::VerifyingKey::from(k)
                .verify(message, &s)
                .is_ok()
        }),
        EcPublic::P521(k) => p521::ecdsa::Signature::from_slice(signature).is_ok_and(|s| {
            p521::ecdsa::VerifyingKey::from_affine(*k.as_affine())
                .is_ok_and(|v| v.verify(message, &s).is_ok())
        }),
    }
}

/// The DER body of the first PEM block in `data`, whatever its label, as Go's
/// `pem.Decode` finds it.
fn pem_body(data: &[u8]) -> Result<Vec<u8>, String> {
    let start = data
        .windows(11)
        .position(|w| w == b"-----BEGIN ")
        .ok_or_else(|| ERR_NOT_PEM.to_string())?;
    pem::parse(&data[start..])
        .map(|p| p.into_contents())
        .map_err(|_| ERR_NOT_PEM.to_string())
}

/// A private key in any of the DER forms Go's x509 reads.
enum AnyPrivate {
    /// PKCS#1 `RSAPrivateKey`.
    Pkcs1Rsa(Box<RsaPrivateKey>),
    /// SEC1 `ECPrivateKey`.
    Sec1Ec(EcSecret),
    /// SEC1-shaped, but without a named curve, or on a curve not supported here.
    Sec1Unusable,
    /// PKCS#8 with an RSA key.
    Pkcs8Rsa(Box<RsaPrivateKey>),
    /// PKCS#8 with an EC key.
    Pkcs8Ec(EcSecret),
    /// PKCS#8 with a key of another algorithm.
    Pkcs8Other,
    /// Nothing Go would read.
    Unreadable,
}

fn parse_private(der: &[u8]) -> AnyPrivate {
    if let Ok(k) = RsaPrivateKey::from_pkcs1_der(der) {
        return AnyPrivate::Pkcs1Rsa(Box::new(k));
    }
    match ec_from_sec1(der) {
        Some(Some(k)) => return AnyPrivate::Sec1Ec(k),
        Some(None) => return AnyPrivate::Sec1Unusable,
        None => {}
    }
    if let Ok(k) = RsaPrivateKey::from_pkcs8_der(der) {
        return AnyPrivate::Pkcs8Rsa(Box::new(k));
    }
    if let Ok(k) = p256::SecretKey::from_pkcs8_der(der) {
        return AnyPrivate::Pkcs8Ec(EcSecret::P256(k));
    }
    if let Ok(k) = p384::SecretKey::from_pkcs8_der(der) {
        return AnyPrivate::Pkcs8Ec(EcSecret::P384(k));
    }
    if let Ok(k) = p521::SecretKey::from_pkcs8_der(der) {
        return AnyPrivate::Pkcs8Ec(EcSecret::P521(k));
    }
    if rsa::pkcs8::PrivateKeyInfo::try_from(der).is_ok() {
        return AnyPrivate::Pkcs8Other;
    }
    AnyPrivate::Unreadable
}

/// A SEC1 `ECPrivateKey` as Go's `x509.ParseECPrivateKey` reads it: `None` when `der` is
/// not one, `Some(None)` when it is one Go refuses (no named curve, or one it does not
/// sign with here).
fn ec_from_sec1(der: &[u8]) -> Option<Option<EcSecret>> {
    use sec1::der::Decode;
    const P256: &str = "1.2.840.10045.3.1.7";
    const P384: &str = "1.3.132.0.34";
    const P521: &str = "1.3.132.0.35";
    let key = sec1::EcPrivateKey::from_der(der).ok()?;
    let curve = key
        .parameters
        .and_then(|p| p.named_curve())
        .map(|oid| oid.to_string());
    let secret = match curve.as_deref() {
        Some(P256) => p256::SecretKey::from_slice(key.private_key)
            .ok()
            .map(EcSecret::P256),
        Some(P384) => p384::SecretKey::from_slice(key.private_key)
            .ok()
            .map(EcSecret::P384),
        Some(P521) => p521::SecretKey::from_slice(key.private_key)
            .ok()
            .map(EcSecret::P521),
        _ => None,
    };
    Some(secret)
}

/// The DER `SubjectPublicKeyInfo` of a PKIX public key, or of a certificate's key, as the
/// JWT library accepts both.
fn public_key_info(der: &[u8]) -> Result<Vec<u8>, String> {
    use x509_cert::der::{Decode, Encode};
    if x509_cert::spki::SubjectPublicKeyInfoRef::from_der(der).is_ok() {
        return Ok(der.to_vec());
    }
    let cert = x509_cert::Certificate::from_der(der).map_err(|_| ERR_MALFORMED_CERT.to_string())?;
    cert.tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| ERR_MALFORMED_CERT.to_string())
}

/// etcd's `rsaKey`: the private key when given (it signs and verifies), else the public
/// key alone (verify-only), else "missing key data".
fn rsa_key(public_pem: &[u8], private_pem: &[u8]) -> Result<Key, String> {
    let private = if private_pem.is_empty() {
        None
    } else {
        match parse_private(&pem_body(private_pem)?) {
            AnyPrivate::Pkcs1Rsa(k) | AnyPrivate::Pkcs8Rsa(k) => Some(k),
            AnyPrivate::Pkcs8Ec(_) | AnyPrivate::Pkcs8Other => {
                return Err(ERR_NOT_RSA_PRIVATE.into())
            }
            AnyPrivate::Sec1Ec(_) | AnyPrivate::Sec1Unusable => return Err(ERR_EC_HINT.into()),
            AnyPrivate::Unreadable => return Err("x509: failed to parse private key".into()),
        }
    };
    let public = if public_pem.is_empty() {
        None
    } else {
        let spki = public_key_info(&pem_body(public_pem)?)?;
        Some(RsaPublicKey::from_public_key_der(&spki).map_err(|_| ERR_NOT_RSA_PUBLIC.to_string())?)
    };
    match (private, public) {
        (None, None) => Err(ERR_MISSING_KEY.into()),
        (None, Some(public)) => Ok(Key::RsaPublic(Box::new(public))),
        (Some(private), public) => {
            // etcd refuses the pair only when both the exponent and the modulus differ;
            // otherwise the private key is used and the public one is ignored.
            if public.is_some_and(|p| p.e() != private.e() && p.n() != private.n()) {
                return Err(ERR_KEY_MISMATCH.into());
            }
            Ok(Key::RsaPrivate(private))
        }
    }
}

/// etcd's `ecKey`, as [`rsa_key`] for EC keys on P-256, P-384 or P-521.
fn ec_key(public_pem: &[u8], private_pem: &[u8]) -> Result<Key, String> {
    let private = if private_pem.is_empty() {
        None
    } else {
        match parse_private(&pem_body(private_pem)?) {
            AnyPrivate::Sec1Ec(k) | AnyPrivate::Pkcs8Ec(k) => Some(k),
            AnyPrivate::Pkcs8Rsa(_) | AnyPrivate::Pkcs8Other => {
                return Err(ERR_NOT_EC_PRIVATE.into())
            }
            AnyPrivate::Pkcs1Rsa(_) => return Err(ERR_PKCS1_HINT.into()),
            AnyPrivate::Sec1Unusable => return Err(ERR_EC_HINT.into()),
            AnyPrivate::Unreadable => return Err("x509: failed to parse private key".into()),
        }
    };
    let public = if public_pem.is_empty() {
        None
    } else {
        let spki = public_key_info(&pem_body(public_pem)?)?;
        let key = if let Ok(k) = p256::PublicKey::from_public_key_der(&spki) {
            EcPublic::P256(k)
        } else if let Ok(k) = p384::PublicKey::from_public_key_der(&spki) {
            EcPublic::P384(k)
        } else if let Ok(k) = p521::PublicKey::from_public_key_der(&spki) {
            EcPublic::P521(k)
        } else {
            return Err(ERR_NOT_EC_PUBLIC.into());
        };
        Some(key)
    };
    match (private, public) {
        (None, None) => Err(ERR_MISSING_KEY.into()),
        (None, Some(public)) => Ok(Key::EcPublic(public)),
        (Some(private), public) => {
            // etcd refuses the pair only when the curve and both coordinates differ.
            if let Some(p) = public {
                let own = private.public();
                let (a, b) = (p.point_bytes(), own.point_bytes());
                let half = |v: &[u8], second: bool| -> Vec<u8> {
                    let n = (v.len() - 1) / 2;
                    if second {
                        v[1 + n..].to_vec()
                    } else {
                        v[1..1 + n].to_vec()
                    }
                };
                if p.curve() != own.curve()
                    && half(&a, false) != half(&b, false)
                    && half(&a, true) != half(&b, true)
                {
                    return Err(ERR_KEY_MISMATCH.into());
                }
            }
            Ok(Key::EcPrivate(private))
        }
    }
}

#[cfg(test)]
mod tests;
