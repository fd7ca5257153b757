//! The member-local table of simple auth tokens (etcd's `tokenSimple` with its
//! `simpleTokenKeeper`): which user each token stands for and when it lapses.
//!
//! Applied Authenticate entries fill it on every member alike; a token lapses after the
//! TTL (`--auth-token-ttl`) without use, and each use renews it. Pure: the caller passes
//! the current time, so tests and simulations control expiry.

use std::collections::HashMap;
use std::time::Duration;

use crate::rt::Instant;

/// The simple-token table.
#[derive(Debug, Clone)]
pub struct TokenTable {
    ttl: Duration,
    tokens: HashMap<String, (String, Instant)>,
}

impl TokenTable {
    /// An empty table whose tokens lapse after `ttl` without use.
    pub fn new(ttl: Duration) -> TokenTable {
        TokenTable {
            ttl,
            tokens: HashMap::new(),
        }
    }

    /// Records that `token` stands for `user` from `now` on.
    pub fn assign(&mut self, token: String, user: String, now: Instant) {
        self.tokens.insert(token, (user, now + self.ttl));
    }

    /// The user `token` stands for, renewing the token, or `None` if it is unknown or has
    /// lapsed (a lapsed token is forgotten).
    pub fn user_of(&mut self, token: &str, now: Instant) -> Option<String> {
        let (user, deadline) = self.tokens.get_mut(token)?;
        if *deadline <= now {
            self.tokens.remove(token);
            return None;
        }
        *deadline = now + self.ttl;
        Some(user.clone())
    }

    /// Forgets every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&mut self, user: &str) {
        self.tokens.retain(|_, (u, _)| u != user);
    }

    /// Forgets every token (auth disabled).
    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    /// Forgets the tokens that have lapsed by `now`, so unused tokens do not pile up.
    pub fn expire(&mut self, now: Instant) {
        self.tokens.retain(|_, (_, deadline)| *deadline > now);
    }

    /// How many tokens are held (lapsed ones included until [`TokenTable::expire`]).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// A random simple-token prefix as etcd makes them: 16 ASCII letters. `random` supplies
/// the randomness (the runtime seam's, so simulations are reproducible).
pub fn simple_token_prefix(mut random: impl FnMut() -> u64) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..16)
        .map(|_| LETTERS[(random() % LETTERS.len() as u64) as usize] as char)
        .collect()
}

/// Whether `token` has the form of a simple token, `prefix.index`, and the raft index it
/// was assigned at (a member that has not applied that index yet does not know it).
pub fn simple_token_index(token: &str) -> Option<u64> {
    let (prefix, index) = token.split_once('.')?;
    if prefix.is_empty() || index.contains('.') {
        return None;
    }
    index.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_lapse_without_use_and_renew_on_use() {
        let t0 = Instant::now();
        let mut table = TokenTable::new(Duration::from_secs(300));
        table.assign("abc.5".into(), "user0".into(), t0);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(table.user_of("abc.5", at(299)).as_deref(), Some("user0"));
        // Renewed at 299 s, so still valid at 598 s, then lapsed 300 s after that use.
        assert_eq!(table.user_of("abc.5", at(598)).as_deref(), Some("user0"));
        assert_eq!(table.user_of("abc.5", at(898)), None);
        assert!(table.is_empty(), "a lapsed token is forgotten");
        assert_eq!(table.user_of("nope.1", at(0)), None);
    }

    #[test]
    fn invalidation_drops_a_users_tokens_only() {
        let t0 = Instant::now();
        let mut table = TokenTable::new(Duration::from_secs(10));
        table.assign("a.1".into(), "u".into(), t0);
        table.assign("b.2".into(), "u".into(), t0);
        table.assign("c.3".into(), "v".into(), t0);
        table.invalidate_user("u");
        assert_eq!(table.user_of("a.1", t0), None);
        assert_eq!(table.user_of("b.2", t0), None);
        assert_eq!(table.user_of("c.3", t0).as_deref(), Some("v"));
        table.assign("d.4".into(), "w".into(), t0 + Duration::from_secs(5));
        table.expire(t0 + Duration::from_secs(11));
        assert_eq!(table.len(), 1);
        table.clear();
        assert!(table.is_empty());
    }

    #[test]
    fn prefixes_are_sixteen_letters_and_indexes_parse() {
        let mut n = 0u64;
        let p = simple_token_prefix(|| {
            n += 7;
            n
        });
        assert_eq!(p.len(), 16);
        assert!(p.chars().all(|c| c.is_ascii_alphabetic()));
        assert_eq!(simple_token_index("abc.42"), Some(42));
        assert_eq!(simple_token_index("abc"), None);
        assert_eq!(simple_token_index("a.b.1"), None);
        assert_eq!(simple_token_index(".1"), None);
        assert_eq!(simple_token_index("abc.x"), None);
    }
}
