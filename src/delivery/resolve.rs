//! Name resolution for the agent, cached.
//!
//! ureq resolves the endpoint's host before every request, even one that
//! reuses a pooled connection, and with a timeout set it does so on a new
//! thread each time. For a webhook daemon that is a thread and a DNS lookup
//! per CDR. This resolver keeps each answer for a minute and only then asks
//! ureq's own resolver (with its timeout) again.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

use crate::locks::lock;

/// How long an answer is reused. Short enough that a changed DNS record is
/// followed within a minute.
const TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct CachingResolver {
    inner: DefaultResolver,
    cache: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
}

impl fmt::Debug for CachingResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CachingResolver")
    }
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map(|a| a.as_str()).unwrap_or("")
        );
        {
            let cache = lock(&self.cache);
            if let Some((at, addrs)) = cache.get(&key) {
                if at.elapsed() < TTL {
                    return Ok(addrs.clone());
                }
            }
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        let mut cache = lock(&self.cache);
        // A handful of endpoints at most; drop stale entries as we go.
        cache.retain(|_, (at, _)| at.elapsed() < TTL);
        cache.insert(key, (Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}
