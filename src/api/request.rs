//! What every handler may ask of a request, apart from its path: who made
//! it ([`RequestContext`], the actor of the events it causes) and its query
//! parameters ([`query_param`], [`query_pairs`]). The router and the
//! handlers both use this module, so no handler needs the router.

use std::net::SocketAddr;

use crate::events::Actor;
use crate::sendfile::FileRegions;

/// Who is asking (recorded as the actor of the events a request causes),
/// and over what.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The authenticated user, `None` when anonymous.
    pub user: Option<String>,
    pub peer: SocketAddr,
    /// The connection's file regions, when it sends blob pieces with
    /// `sendfile` (plain HTTP; see [`crate::sendfile`]).
    pub sendfile: Option<FileRegions>,
}

impl RequestContext {
    /// The actor of the events this request causes (the peer address is
    /// only formatted for requests that write).
    pub fn actor(&self) -> Actor {
        Actor {
            user: self.user.clone(),
            peer: Some(self.peer.to_string()),
        }
    }
}

/// Query parameters in order, percent-decoded.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// The first value of `key`, percent-decoded.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}
