use std::collections::HashMap;
use std::sync::OnceLock;

use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

use super::*;

/// One RSA key for all tests: generating it is the slow part.
fn rsa_private() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        RsaPrivateKey::new(&mut ChaCha20Rng::seed_from_u64(1), 2048).expect("RSA key")
    })
}

/// A SEC1 PEM naming its curve, as OpenSSL writes them (the EC crates' own SEC1 output
/// names none, which Go refuses).
fn sec1_pem(secret: &[u8], public_point: &[u8], curve_oid: &str) -> Vec<u8> {
    use sec1::der::Encode;
    let oid = sec1::der::oid::ObjectIdentifier::new_unwrap(curve_oid);
    let der = sec1::EcPrivateKey {
        private_key: secret,
        parameters: Some(sec1::EcParameters::NamedCurve(oid)),
        public_key: Some(public_point),
    }
    .to_der()
    .expect("DER");
    pem::encode(&pem::Pem::new("EC PRIVATE KEY", der)).into_bytes()
}

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(7)
}

/// Key files by name, for the `read_file` closure.
struct Files(HashMap<String, Vec<u8>>);

impl Files {
    fn new() -> Files {
        let rsa = rsa_private();
        let ec = p256::SecretKey::from_slice(&[7u8; 32]).expect("P-256 key");
        let ec384 = p384::SecretKey::from_slice(&[9u8; 48]).expect("P-384 key");
        let mut ec521_bytes = [5u8; 66];
        ec521_bytes[0] = 0;
        let ec521 = p521::SecretKey::from_slice(&ec521_bytes).expect("P-521 key");
        let mut files = HashMap::new();
        let pem = |s: &str| s.as_bytes().to_vec();
        files.insert(
            "rsa.pem".into(),
            pem(&rsa.to_pkcs1_pem(LineEnding::LF).expect("pem")),
        );
        files.insert(
            "rsa8.pem".into(),
            pem(&rsa.to_pkcs8_pem(LineEnding::LF).expect("pem")),
        );
        files.insert(
            "rsa.pub".into(),
            pem(&rsa
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .expect("pem")),
        );
        files.insert(
            "ec.pem".into(),
            sec1_pem(
                &ec.to_bytes(),
                ec.public_key().to_encoded_point(false).as_bytes(),
                "1.2.840.10045.3.1.7",
            ),
        );
        files.insert(
            "ec8.pem".into(),
            pem(&ec.to_pkcs8_pem(LineEnding::LF).expect("pem")),
        );
        files.insert(
            "ec.pub".into(),
            pem(&ec
                .public_key()
                .to_public_key_pem(LineEnding::LF)
                .expect("pem")),
        );
        files.insert(
            "ec384.pem".into(),
            sec1_pem(
                &ec384.to_bytes(),
                ec384.public_key().to_encoded_point(false).as_bytes(),
                "1.3.132.0.34",
            ),
        );
        files.insert(
            "ec384.pub".into(),
            pem(&ec384
                .public_key()
                .to_public_key_pem(LineEnding::LF)
                .expect("pem")),
        );
        files.insert(
            "ec521.pem".into(),
            sec1_pem(
                &ec521.to_bytes(),
                ec521.public_key().to_encoded_point(false).as_bytes(),
                "1.3.132.0.35",
            ),
        );
        files.insert(
            "ec-nocurve.pem".into(),
            pem(&ec.to_sec1_pem(LineEnding::LF).expect("pem")),
        );
        files.insert("secret".into(), b"not a PEM file, an HMAC secret".to_vec());
        Files(files)
    }

    fn provider(&self, options: &str) -> Result<TokenProvider, String> {
        token_provider(options, &mut |path| {
            self.0
                .get(path)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        })
        .map(|(p, _)| p)
    }

    fn jwt(&self, options: &str) -> JwtTokens {
        match self.provider(options) {
            Ok(TokenProvider::Jwt(j)) => *j,
            other => panic!("{options}: {other:?}"),
        }
    }
}

const NOW_MS: i64 = 1_700_000_000_123;

#[test]
fn options_decompose_as_etcd() {
    let (t, m) = decompose_options("jwt,sign-method=RS256,ttl=5m").unwrap();
    assert_eq!(t, "jwt");
    assert_eq!(m["sign-method"], "RS256");
    assert_eq!(m["ttl"], "5m");
    let invalid = Err(ERR_INVALID_AUTH_OPTS.to_string());
    assert_eq!(decompose_options("jwt,"), invalid);
    assert_eq!(decompose_options("jwt,a=b=c"), invalid);
    assert_eq!(decompose_options("jwt,ttl=1s,ttl=2s"), invalid);
    assert_eq!(decompose_options("simple").unwrap().1.len(), 0);
}

#[test]
fn providers_and_start_errors_are_etcds() {
    let f = Files::new();
    assert!(matches!(f.provider("simple"), Ok(TokenProvider::Simple)));
    assert!(matches!(f.provider(""), Ok(TokenProvider::Nop)));
    let err = |o: &str| f.provider(o).map(|_| ()).unwrap_err();
    assert_eq!(err("bogus"), ERR_INVALID_AUTH_OPTS);
    assert_eq!(err("jwt"), ERR_INVALID_AUTH_OPTS, "sign-method is required");
    assert_eq!(err("jwt,sign-method=XX256"), ERR_INVALID_AUTH_OPTS);
    assert_eq!(err("jwt,sign-method=RS256"), ERR_MISSING_KEY);
    assert_eq!(err("jwt,sign-method=HS256"), ERR_MISSING_KEY);
    assert_eq!(
        err("jwt,sign-method=RS256,priv-key=rsa.pem,ttl=5"),
        ERR_INVALID_AUTH_OPTS,
        "a TTL needs a unit"
    );
    assert_eq!(
        err("jwt,sign-method=RS256,priv-key=missing.pem"),
        ERR_INVALID_AUTH_OPTS
    );
    assert_eq!(
        err("jwt,sign-method=EdDSA,priv-key=ec.pem"),
        "unsupported signing method: *jwt.SigningMethodEd25519"
    );
    assert_eq!(
        err("jwt,sign-method=RS256,priv-key=secret"),
        "invalid key: Key must be a PEM encoded PKCS1 or PKCS8 key"
    );
    assert_eq!(
        err("jwt,sign-method=ES256,priv-key=rsa8.pem"),
        "key is not a valid ECDSA private key"
    );
    assert_eq!(
        err("jwt,sign-method=ES256,pub-key=rsa.pub"),
        "key is not a valid ECDSA public key"
    );
    assert_eq!(
        err("jwt,sign-method=RS256,pub-key=ec.pub"),
        "key is not a valid RSA public key"
    );
    assert_eq!(
        err("jwt,sign-method=RS256,priv-key=ec.pem"),
        "x509: failed to parse private key (use ParseECPrivateKey instead for this key format)"
    );
    assert_eq!(
        err("jwt,sign-method=ES256,priv-key=ec-nocurve.pem"),
        "x509: failed to parse private key (use ParseECPrivateKey instead for this key format)",
        "Go needs the named curve in a SEC1 key"
    );
    assert_eq!(
        err("jwt,sign-method=ES256,priv-key=rsa.pem"),
        "x509: failed to parse private key (use ParsePKCS1PrivateKey instead for this key format)"
    );
    assert_eq!(
        err("jwt,sign-method=RS256,pub-key=rsa.pem"),
        "x509: malformed tbs certificate"
    );
    // A P-384 public key beside a P-256 private key differs in curve and coordinates.
    assert_eq!(
        err("jwt,sign-method=ES256,priv-key=ec.pem,pub-key=ec384.pub"),
        ERR_KEY_MISMATCH
    );
    // Unknown options are only warned about.
    let (_, warnings) = token_provider("jwt,sign-method=HS256,priv-key=secret,foo=1", &mut |_| {
        Ok(b"k".to_vec())
    })
    .unwrap();
    assert_eq!(
        warnings,
        vec![r#"unknown JWT options: ["foo"]"#.to_string()]
    );
}

#[test]
fn ttl_defaults_to_five_minutes_and_keeps_its_sign() {
    let f = Files::new();
    assert_eq!(
        f.jwt("jwt,sign-method=RS256,priv-key=rsa.pem").ttl_ms(),
        300_000
    );
    assert_eq!(
        f.jwt("jwt,sign-method=RS256,priv-key=rsa.pem,ttl=1h30m")
            .ttl_ms(),
        5_400_000
    );
    assert_eq!(
        f.jwt("jwt,sign-method=RS256,priv-key=rsa.pem,ttl=-5s")
            .ttl_ms(),
        -5_000
    );
}

#[test]
fn every_method_signs_tokens_it_verifies() {
    let f = Files::new();
    for options in [
        "jwt,sign-method=RS256,priv-key=rsa.pem",
        "jwt,sign-method=RS384,priv-key=rsa8.pem,pub-key=rsa.pub",
        "jwt,sign-method=RS512,priv-key=rsa.pem",
        "jwt,sign-method=PS256,priv-key=rsa.pem",
        "jwt,sign-method=PS384,priv-key=rsa.pem",
        "jwt,sign-method=PS512,priv-key=rsa.pem",
        "jwt,sign-method=ES256,priv-key=ec.pem,pub-key=ec.pub",
        "jwt,sign-method=ES256,priv-key=ec8.pem",
        "jwt,sign-method=ES384,priv-key=ec384.pem",
        "jwt,sign-method=ES512,priv-key=ec521.pem",
        "jwt,sign-method=HS256,priv-key=secret",
        "jwt,sign-method=HS384,priv-key=secret",
        "jwt,sign-method=HS512,priv-key=secret",
    ] {
        let jwt = f.jwt(options);
        assert!(!jwt.is_verify_only(), "{options}");
        let token = jwt
            .sign("user0", 7, NOW_MS, &mut rng())
            .unwrap_or_else(|e| panic!("{options}: {e}"));
        assert_eq!(
            jwt.verify(&token, NOW_MS),
            Some(JwtClaims {
                username: "user0".into(),
                revision: 7
            }),
            "{options}"
        );
        // Any change to the signed part or the signature is caught.
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let other_claims =
            URL_SAFE_NO_PAD.encode(r#"{"exp":9999999999,"revision":7,"username":"root"}"#);
        let (header, _) = signed.split_once('.').unwrap();
        let forged = format!("{header}.{other_claims}.{signature}");
        assert_eq!(jwt.verify(&forged, NOW_MS), None, "{options}");
        let mut bad_sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
        bad_sig[0] ^= 1;
        let tampered = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(bad_sig));
        assert_eq!(jwt.verify(&tampered, NOW_MS), None, "{options}");
    }
}

#[test]
fn tokens_have_etcds_form_and_expire_after_the_ttl() {
    let f = Files::new();
    let jwt = f.jwt("jwt,sign-method=RS256,priv-key=rsa.pem,ttl=10s");
    let token = jwt.sign("user<0>", 3, NOW_MS, &mut rng()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(
        URL_SAFE_NO_PAD.decode(parts[0]).unwrap(),
        br#"{"alg":"RS256","typ":"JWT"}"#
    );
    assert_eq!(
        String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap(),
        r#"{"exp":1700000010,"revision":3,"username":"user\u003c0\u003e"}"#
    );
    // Valid through the second of `exp`, refused after it.
    assert!(jwt.verify(&token, 1_700_000_010_999).is_some());
    assert_eq!(jwt.verify(&token, 1_700_000_011_000), None);
    // A negative TTL issues tokens that have already expired.
    let past = f.jwt("jwt,sign-method=RS256,priv-key=rsa.pem,ttl=-5s");
    let token = past.sign("user0", 3, NOW_MS, &mut rng()).unwrap();
    assert_eq!(past.verify(&token, NOW_MS), None);
}

#[test]
fn verify_only_providers_verify_but_do_not_sign() {
    let f = Files::new();
    let signer = f.jwt("jwt,sign-method=RS256,priv-key=rsa.pem");
    let verifier = f.jwt("jwt,sign-method=RS256,pub-key=rsa.pub");
    assert!(verifier.is_verify_only());
    let token = signer.sign("user0", 1, NOW_MS, &mut rng()).unwrap();
    assert!(verifier.verify(&token, NOW_MS).is_some());
    assert_eq!(
        verifier.sign("user0", 1, NOW_MS, &mut rng()),
        Err(ERR_VERIFY_ONLY.to_string())
    );
    let ec_signer = f.jwt("jwt,sign-method=ES256,priv-key=ec.pem");
    let ec_verifier = f.jwt("jwt,sign-method=ES256,pub-key=ec.pub");
    assert!(ec_verifier.is_verify_only());
    let token = ec_signer.sign("user0", 1, NOW_MS, &mut rng()).unwrap();
    assert!(ec_verifier.verify(&token, NOW_MS).is_some());
}

#[test]
fn foreign_and_malformed_tokens_are_refused() {
    let f = Files::new();
    let rs256 = f.jwt("jwt,sign-method=RS256,priv-key=rsa.pem");
    let rs384 = f.jwt("jwt,sign-method=RS384,priv-key=rsa.pem");
    let es256 = f.jwt("jwt,sign-method=ES256,priv-key=ec.pem");
    let other_ec = {
        let mut files = Files::new();
        let other = p256::SecretKey::from_slice(&[8u8; 32]).unwrap();
        files.0.insert(
            "other.pem".into(),
            other
                .to_pkcs8_pem(LineEnding::LF)
                .unwrap()
                .as_bytes()
                .to_vec(),
        );
        files.jwt("jwt,sign-method=ES256,priv-key=other.pem")
    };
    let token = rs256.sign("user0", 1, NOW_MS, &mut rng()).unwrap();
    // Another method, or another key, does not verify it.
    assert_eq!(rs384.verify(&token, NOW_MS), None);
    assert_eq!(es256.verify(&token, NOW_MS), None);
    let ec_token = es256.sign("user0", 1, NOW_MS, &mut rng()).unwrap();
    assert_eq!(other_ec.verify(&ec_token, NOW_MS), None);
    // An EC key on another curve than the method's cannot sign.
    let mismatched = f.jwt("jwt,sign-method=ES384,priv-key=ec.pem");
    assert_eq!(
        mismatched.sign("user0", 1, NOW_MS, &mut rng()),
        Err(ERR_INVALID_KEY.to_string())
    );
    for garbage in [
        "",
        "a.b",
        "a.b.c.d",
        "!!.!!.!!",
        "abc.5",
        "e30.e30.",
        &format!("{token}x"),
    ] {
        assert_eq!(rs256.verify(garbage, NOW_MS), None, "{garbage:?}");
    }
    // Well-signed claims of the wrong types are refused rather than trusted.
    let hs = f.jwt("jwt,sign-method=HS256,priv-key=secret");
    let sign_claims = |claims: &str| {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let tag = hmac_tag(
            Hash::Sha256,
            b"not a PEM file, an HMAC secret",
            input.as_bytes(),
        );
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag))
    };
    assert!(hs
        .verify(&sign_claims(r#"{"username":"u","revision":2}"#), NOW_MS)
        .is_some());
    for claims in [
        r#"{"username":1,"revision":2}"#,
        r#"{"username":"u"}"#,
        r#"{"username":"u","revision":"2"}"#,
        r#"{"username":"u","revision":2,"exp":"soon"}"#,
        r#"{"username":"u","revision":2,"nbf":9999999999}"#,
        r#"[1,2]"#,
    ] {
        assert_eq!(hs.verify(&sign_claims(claims), NOW_MS), None, "{claims}");
    }
}
