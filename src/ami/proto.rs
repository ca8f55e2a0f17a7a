//! AMI wire format: CRLF lines of `Key: Value`, one block per message, a block ended by an
//! empty line. Keys may repeat inside a block (`ChanVariable`, `Output`), so a [`Message`]
//! keeps its fields as an ordered list. [`Decoder`] turns a byte stream into messages
//! without ever panicking: bare-LF line ends are accepted, bytes that are not UTF-8 are
//! replaced (U+FFFD), lines without a colon are dropped, and an over-long line or block is
//! an error (the connection should then be dropped).

use std::fmt;

/// Longest line accepted (bytes, without the line end).
pub const MAX_LINE: usize = 64 * 1024;
/// Most fields accepted in one block.
pub const MAX_FIELDS: usize = 20_000;

/// Errors of the AMI framing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// A line longer than [`MAX_LINE`] bytes.
    #[error("AMI line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// A block with more than [`MAX_FIELDS`] fields.
    #[error("AMI block with more than {MAX_FIELDS} fields")]
    BlockTooLarge,
    /// A value to send holds a CR, LF or NUL, which would inject a header.
    #[error("AMI field {0:?} holds a line break or NUL")]
    Unsafe(String),
}

/// One AMI block: `Response: ...` or `Event: ...` or an action to send.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Message {
    fields: Vec<(String, String)>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets (Login's Secret, auth detail passwords).
        let mut m = f.debug_map();
        for (k, v) in &self.fields {
            if is_secret_key(k) {
                m.entry(k, &"***");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

fn is_secret_key(k: &str) -> bool {
    [
        "secret",
        "password",
        "passworddigest",
        "md5cred",
        "oauthsecret",
        "refreshtoken",
    ]
    .iter()
    .any(|s| k.eq_ignore_ascii_case(s))
}

impl Message {
    /// An empty message.
    pub fn new() -> Self {
        Message::default()
    }

    /// An action: `Action: name` first.
    pub fn action(name: &str) -> Self {
        Message {
            fields: vec![("Action".into(), name.into())],
        }
    }

    /// Appends a field (keys may repeat).
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.fields.push((key.into(), value.into()));
    }

    /// Builder form of [`Message::push`].
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.push(key, value);
        self
    }

    /// The first value of `key` (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order (case-insensitive).
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Replaces the first value of `key`, or appends it.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        match self
            .fields
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
        {
            Some((_, v)) => *v = value.into(),
            None => self.fields.push((key.into(), value.into())),
        }
    }

    /// All fields in order.
    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }

    /// True when the block has no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// `Response` value (Success, Error, Follows, Goodbye), if this is a response.
    pub fn response(&self) -> Option<&str> {
        self.get("Response")
    }

    /// `Event` value, if this is an event.
    pub fn event(&self) -> Option<&str> {
        self.get("Event")
    }

    /// `ActionID` value.
    pub fn action_id(&self) -> Option<&str> {
        self.get("ActionID")
    }

    /// Encodes the block (CRLF lines and the empty line). Err when a key or value holds CR,
    /// LF or NUL, or a key holds `:`.
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        let mut out = Vec::with_capacity(64 * self.fields.len() + 2);
        for (k, v) in &self.fields {
            let bad_key = k.is_empty() || k.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0 | b':'));
            if bad_key || v.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
                return Err(ProtoError::Unsafe(k.clone()));
            }
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Ok(out)
    }
}

/// Incremental decoder: feed bytes with [`Decoder::feed`], take messages with
/// [`Decoder::next_message`].
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    pos: usize,
    /// Bytes before this offset hold no line end (so a long line is scanned once, not on
    /// every feed).
    scanned: usize,
    current: Message,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.scanned = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.scanned = self.scanned.saturating_sub(self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next complete line (without its line end), if any.
    pub fn next_line(&mut self) -> Result<Option<String>, ProtoError> {
        let from = self.scanned.max(self.pos);
        let rest = &self.buf[self.pos..];
        match self.buf[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| i + from - self.pos)
        {
            Some(i) => {
                if i > MAX_LINE + 1 {
                    return Err(ProtoError::LineTooLong);
                }
                let mut line = &rest[..i];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                let s = String::from_utf8_lossy(line).into_owned();
                self.pos += i + 1;
                Ok(Some(s))
            }
            None if rest.len() > MAX_LINE + 1 => Err(ProtoError::LineTooLong),
            None => {
                self.scanned = self.buf.len();
                Ok(None)
            }
        }
    }

    /// Takes the next complete block, if one is buffered. Empty lines between blocks are
    /// skipped; a line without `:` is dropped.
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtoError> {
        while let Some(line) = self.next_line()? {
            if line.is_empty() {
                if self.current.is_empty() {
                    continue;
                }
                return Ok(Some(std::mem::take(&mut self.current)));
            }
            match line.split_once(':') {
                Some((k, v)) => {
                    if self.current.fields.len() >= MAX_FIELDS {
                        self.current = Message::default();
                        return Err(ProtoError::BlockTooLarge);
                    }
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    self.current
                        .fields
                        .push((k.trim().to_string(), v.to_string()));
                }
                None => tracing::debug!("AMI: line without a colon dropped ({} bytes)", line.len()),
            }
        }
        Ok(None)
    }
}

/// Parses every complete block of `bytes` (a capture), dropping a trailing partial block.
pub fn parse_all(bytes: &[u8]) -> Result<Vec<Message>, ProtoError> {
    let mut d = Decoder::new();
    d.feed(bytes);
    let mut out = Vec::new();
    while let Some(m) = d.next_message()? {
        out.push(m);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_and_lf_only() {
        let raw = b"Event: VarSet\r\nChanVariable: a=1\r\nChanVariable: b=2\n\nResponse: Success\r\nActionID: x\r\n\r\n";
        let msgs = parse_all(raw).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            msgs[0].get_all("chanvariable").collect::<Vec<_>>(),
            ["a=1", "b=2"]
        );
        assert_eq!(msgs[1].action_id(), Some("x"));
    }

    #[test]
    fn split_feeds() {
        let raw = b"Response: Success\r\nMessage: a: b\r\n\r\n";
        let mut d = Decoder::new();
        for b in raw {
            assert!(d.next_message().unwrap().is_none());
            d.feed(&[*b]);
        }
        let m = d.next_message().unwrap().unwrap();
        assert_eq!(m.get("Message"), Some("a: b"));
    }

    #[test]
    fn encode_refuses_injection() {
        let m = Message::action("Reload").with("Module", "res_pjsip.so\r\nAction: Restart");
        assert!(m.encode().is_err());
        let m = Message::action("Login").with("Secret", "s3cret");
        assert!(!format!("{m:?}").contains("s3cret"));
    }

    #[test]
    fn byte_by_byte_long_line_is_linear() {
        // 60 KiB without a line end, fed one byte at a time: each byte is scanned once.
        let mut d = Decoder::new();
        for _ in 0..60_000 {
            d.feed(b"a");
            assert_eq!(d.next_message(), Ok(None));
        }
        d.feed(b": b\r\n\r\n");
        assert_eq!(d.next_message().unwrap().unwrap().fields().len(), 1);
    }

    #[test]
    fn long_line_is_an_error() {
        let mut d = Decoder::new();
        d.feed(&vec![b'a'; MAX_LINE + 10]);
        assert_eq!(d.next_message(), Err(ProtoError::LineTooLong));
    }
}
