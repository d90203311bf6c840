//! The words a statement's text is looked at for on its way to the server, found in one pass
//! per statement: those of statements that may change session state (so that ordinary
//! statements skip the statement splitter), and those of statements that may make or remove
//! server-session state that pins a connection (see `pins`). In the few statements with a
//! word of the first kind, a second pass looks for those of an encoding change.

/// One scan's finding: bit `i` for `LIST[i]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Words(u64);

const LIST: &[&[u8]] = &[
    // Session state: bits 0-6.
    b"set",
    b"listen",
    b"discard",
    b"deallocate",
    b"savepoint",
    b"release",
    b"rollback",
    // Pinning state made: bits 7-10 (and listen).
    b"temp",
    b"hold",
    b"prepare",
    b"advisory",
    // Pinning state removed: bits 11-14 (and discard, deallocate).
    b"drop",
    b"close",
    b"unlock",
    b"unlisten",
    // LOAD.
    b"load",
];

static SET: router::wordset::WordSet = router::wordset::WordSet::new(LIST);

const SESSION: u64 = 0x7f;
const MAKES: u64 = 1 << 1 | 1 << 7 | 1 << 8 | 1 << 9 | 1 << 10;
const ENDS: u64 = 1 << 2 | 1 << 3 | 1 << 11 | 1 << 12 | 1 << 13 | 1 << 14;
const LOAD: u64 = 1 << 15;

/// The words of statements that may change the client's encoding, looked for only in
/// statements with a word of `SESSION` (two more words in every statement's scan would cost
/// every statement more than this second scan costs the few).
static ENCODING: router::wordset::WordSet =
    router::wordset::WordSet::new(&[b"names", b"client_encoding"]);

impl Words {
    pub(super) fn of(sql: &[u8]) -> Words {
        Words(SET.find(sql))
    }

    /// None of the words.
    pub(super) fn is_none(self) -> bool {
        self.0 == 0
    }

    /// A word that may start a statement changing session state.
    pub(super) fn may_change_session(self) -> bool {
        self.0 & SESSION != 0
    }

    /// A word of statements that may make state that pins a connection.
    pub(super) fn may_pin(self) -> bool {
        self.0 & MAKES != 0
    }

    /// A word of statements that may remove such state.
    pub(super) fn may_unpin(self) -> bool {
        self.0 & ENDS != 0
    }

    pub(super) fn load(self) -> bool {
        self.0 & LOAD != 0
    }
}

/// The encoding words of a statement: `names` (of `SET NAMES`), `client_encoding`.
#[derive(Clone, Copy, Debug)]
pub(super) struct EncodingWords {
    pub(super) names: bool,
    pub(super) client_encoding: bool,
}

impl EncodingWords {
    pub(super) fn of(sql: &[u8]) -> EncodingWords {
        let found = ENCODING.find(sql);
        EncodingWords {
            names: found & 1 != 0,
            client_encoding: found & 2 != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_group_is_its_words() {
        let words = |w: &[&[u8]]| w.iter().map(|w| Words::of(w)).collect::<Vec<_>>();
        for w in words(&[
            b"set",
            b"listen",
            b"discard",
            b"deallocate",
            b"savepoint",
            b"release",
            b"rollback",
        ]) {
            assert!(w.may_change_session(), "{w:?}");
        }
        for w in words(&[b"temp", b"hold", b"prepare", b"listen", b"advisory"]) {
            assert!(w.may_pin(), "{w:?}");
        }
        for w in words(&[
            b"drop",
            b"discard",
            b"close",
            b"deallocate",
            b"unlock",
            b"unlisten",
        ]) {
            assert!(w.may_unpin(), "{w:?}");
        }
        assert!(Words::of(b"LOAD 'auto_explain'").load());
        let names = EncodingWords::of(b"SET NAMES 'LATIN1'");
        assert!(names.names && !names.client_encoding);
        let e = EncodingWords::of(b"SELECT set_config('client_encoding', 'LATIN1', true)");
        assert!(e.client_encoding && !e.names);
        let plain = Words::of(b"SELECT abalance FROM pgbench_accounts WHERE aid = $1");
        assert!(
            !plain.may_change_session() && !plain.may_pin() && !plain.may_unpin() && !plain.load()
        );
    }
}
