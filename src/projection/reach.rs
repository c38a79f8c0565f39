//! Which manifests of a repository something still needs: the question
//! behind garbage collection's untagged-manifest policy, asked by its mark
//! phase and again by `Command::CollectManifests` when it is planned.
//!
//! From a set of roots (every tagged manifest, plus those the caller
//! names), a manifest is reachable when a reachable manifest references it
//! (a child of an index, or the `subject` of a referrer), or when it is a
//! referrer of a reachable manifest (a signature or SBOM attached to a
//! live image stays with it).

use std::collections::{BTreeSet, HashMap, HashSet};

use super::{Manifest, Repo};
use crate::oci::Digest;

impl Repo {
    /// The manifests reachable from the tagged ones and from those for
    /// which `is_root` holds.
    pub fn reachable_manifests(
        &self,
        mut is_root: impl FnMut(&Digest, &Manifest) -> bool,
    ) -> HashSet<&Digest> {
        let mut reached: HashSet<&Digest> = HashSet::new();
        let mut pending: Vec<&Digest> = Vec::new();
        // Only manifests the repository holds: references are keyed by
        // the repository's own digests.
        fn reach<'a>(
            repo: &'a Repo,
            d: &Digest,
            reached: &mut HashSet<&'a Digest>,
            pending: &mut Vec<&'a Digest>,
        ) {
            if let Some((d, _)) = repo.manifests.get_key_value(d) {
                if reached.insert(d) {
                    pending.push(d);
                }
            }
        }
        for d in self.tags.values() {
            reach(self, d, &mut reached, &mut pending);
        }
        for (d, m) in &self.manifests {
            if is_root(d, m) {
                reach(self, d, &mut reached, &mut pending);
            }
        }
        while let Some(d) = pending.pop() {
            let Some(m) = self.manifests.get(d) else {
                continue;
            };
            for child in &m.manifests {
                reach(self, child, &mut reached, &mut pending);
            }
            if let Some(subject) = &m.subject {
                reach(self, subject, &mut reached, &mut pending);
            }
            for referrer in self.referrers.get(d).into_iter().flatten() {
                reach(self, referrer, &mut reached, &mut pending);
            }
        }
        reached
    }

    /// `digests` (manifests of this repository) ordered so that a manifest
    /// comes before every manifest of the set it references: deleting them
    /// in this order, in several steps, never leaves a kept manifest
    /// referencing a deleted one in between.
    pub fn referencing_first(&self, digests: &BTreeSet<Digest>) -> Vec<Digest> {
        // Kahn's algorithm over the references inside the set. Digests
        // are content addresses, so there is no cycle; anything left over
        // (there is none) goes last rather than being lost.
        let edges = |d: &Digest| -> BTreeSet<&Digest> {
            self.manifests
                .get(d)
                .map(|m| {
                    m.manifests
                        .iter()
                        .chain(m.subject.iter())
                        .filter(|t| *t != d && digests.contains(*t))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut referenced_by: HashMap<&Digest, usize> = digests.iter().map(|d| (d, 0)).collect();
        for d in digests {
            for t in edges(d) {
                *referenced_by.get_mut(t).expect("in the set") += 1;
            }
        }
        let mut ready: Vec<&Digest> = digests.iter().filter(|d| referenced_by[d] == 0).collect();
        ready.reverse(); // pop in digest order
        let mut order: Vec<Digest> = Vec::with_capacity(digests.len());
        let mut placed: HashSet<&Digest> = HashSet::new();
        while let Some(d) = ready.pop() {
            order.push(d.clone());
            placed.insert(d);
            for t in edges(d) {
                let n = referenced_by.get_mut(t).expect("in the set");
                *n -= 1;
                if *n == 0 {
                    ready.push(t);
                }
            }
        }
        debug_assert_eq!(order.len(), digests.len(), "references form no cycle");
        order.extend(digests.iter().filter(|d| !placed.contains(d)).cloned());
        order
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::oci::Tag;

    fn d(i: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{i:02x}").repeat(32))).unwrap()
    }

    fn manifest(children: &[u8], subject: Option<u8>, put_seq: u64) -> Manifest {
        Manifest {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            body: Bytes::new(),
            blobs: Vec::new(),
            manifests: children.iter().map(|c| d(*c)).collect(),
            subject: subject.map(d),
            artifact_type: None,
            put_seq,
            headers: Default::default(),
        }
    }

    /// 1: tagged index over 2 and 3; 4: untagged, referrer of 2; 5:
    /// untagged index over 6; 7: referrer of 6; 8: untagged, alone; 9:
    /// tagged referrer of 10 (untagged).
    fn repo() -> Repo {
        let mut r = Repo::default();
        let mut put = |i: u8, m: Manifest| {
            if let Some(s) = &m.subject {
                r.referrers.entry(s.clone()).or_default().insert(d(i));
            }
            r.manifests.insert(d(i), m);
        };
        put(1, manifest(&[2, 3], None, 1));
        put(2, manifest(&[], None, 1));
        put(3, manifest(&[], None, 1));
        put(4, manifest(&[], Some(2), 1));
        put(5, manifest(&[6], None, 1));
        put(6, manifest(&[], None, 1));
        put(7, manifest(&[], Some(6), 1));
        put(8, manifest(&[], None, 1));
        put(9, manifest(&[], Some(10), 1));
        put(10, manifest(&[], None, 1));
        r.tags.insert(Tag::parse("latest").unwrap(), d(1));
        r.tags.insert(Tag::parse("sig").unwrap(), d(9));
        r
    }

    #[test]
    fn tags_reach_children_subjects_and_referrers() {
        let r = repo();
        let reached = r.reachable_manifests(|_, _| false);
        let mut got: Vec<&Digest> = reached.into_iter().collect();
        got.sort();
        assert_eq!(got, [&d(1), &d(2), &d(3), &d(4), &d(9), &d(10)]);
        let with_root = r.reachable_manifests(|digest, _| *digest == d(6));
        assert!(with_root.contains(&d(7)), "a referrer of a root");
        assert!(
            !with_root.contains(&d(5)),
            "an index is not reached from its child"
        );
    }

    #[test]
    fn referencing_manifests_come_first() {
        let r = repo();
        let set: BTreeSet<Digest> = [5, 6, 7, 8].into_iter().map(d).collect();
        let order = r.referencing_first(&set);
        let at = |i: u8| order.iter().position(|x| *x == d(i)).unwrap();
        assert_eq!(order.len(), 4);
        assert!(at(5) < at(6), "the index before its child");
        assert!(at(7) < at(6), "the referrer before its subject");
    }
}
