//! What an archive file holds, told by its first bytes (never by its name), and a streaming reader of its
//! text. logrotate leaves `syslog.2.gz`, operators recompress with zstd or xz, and a name can lie.
//!
//! Decoders (all streaming, no temporary files): gzip through flate2 on zlib-rs (pure Rust, the fastest
//! inflate available to flate2; `MultiGzDecoder`, since logrotate and `cat a.gz b.gz` make multi-member
//! files), zstd through the zstd crate (libzstd, already linked for Kafka's zstd topics), xz through
//! liblzma (the maintained successor of xz2, multi-stream) and bzip2 through the bzip2 crate on its
//! pure-Rust libbz2-rs backend (multi-stream).

use std::fmt;
use std::io::{self, Read};

/// How an input is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Plain,
    Gzip,
    Zstd,
    Xz,
    Bzip2,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Plain => "plain",
            Format::Gzip => "gzip",
            Format::Zstd => "zstd",
            Format::Xz => "xz",
            Format::Bzip2 => "bzip2",
        }
    }

    pub fn is_compressed(self) -> bool {
        self != Format::Plain
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes needed to tell every format apart.
pub const MAGIC_LEN: usize = 262;

/// A file that is not a syslog text or one of the decodable compressions, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotSyslog {
    #[error("{what}; {hint}")]
    Known { what: &'static str, hint: &'static str },
    #[error("binary data, not syslog text (a NUL byte at {at} of its {decoded}content); gzip, zstd, xz and bzip2 are read, other formats are not")]
    Binary { at: u64, decoded: &'static str },
}

/// The format of a stream that starts with `head` (at least [`MAGIC_LEN`] bytes unless it is shorter).
pub fn sniff(head: &[u8]) -> Result<Format, NotSyslog> {
    let starts = |m: &[u8]| head.starts_with(m);
    if starts(&[0x1f, 0x8b]) {
        return Ok(Format::Gzip);
    }
    if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Ok(Format::Zstd);
    }
    if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        return Ok(Format::Xz);
    }
    if head.len() >= 4 && starts(b"BZh") && (b'1'..=b'9').contains(&head[3]) {
        return Ok(Format::Bzip2);
    }
    let known = |what, hint| Err(NotSyslog::Known { what, hint });
    if starts(b"PK\x03\x04") {
        return known("a zip archive", "unpack it first (unzip) and ingest the files it holds");
    }
    if starts(&[0x04, 0x22, 0x4d, 0x18]) {
        return known("lz4 data", "decompress it first (lz4 -d FILE) or pipe it in: lz4 -dc FILE | safeguard ingest -");
    }
    if starts(&[0x89, b'L', b'Z', b'O']) {
        return known("lzop data", "decompress it first (lzop -d) or pipe it in: lzop -dc FILE | safeguard ingest -");
    }
    if starts(&[b'7', b'z', 0xbc, 0xaf, 0x27, 0x1c]) {
        return known("a 7-Zip archive", "unpack it first (7z x) and ingest the files it holds");
    }
    if starts(&[0x5d, 0x00, 0x00]) {
        return known("legacy lzma data", "recompress it with xz, or pipe it in: xz -dc FILE | safeguard ingest -");
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return known("a tar archive", "unpack it first (tar -xf) and ingest the directory");
    }
    Ok(Format::Plain)
}

/// Checks that decoded text looks like log lines: text never holds a NUL byte, binary almost always does.
pub fn check_text(decoded_head: &[u8], format: Format) -> Result<(), NotSyslog> {
    match memchr::memchr(0, decoded_head) {
        None => Ok(()),
        Some(at) => Err(NotSyslog::Binary { at: at as u64, decoded: if format.is_compressed() { "decompressed " } else { "" } }),
    }
}

/// A reader of the text inside `raw` (already positioned at its first byte).
pub fn decoder<R: Read + Send + 'static>(raw: R, format: Format) -> io::Result<Box<dyn Read + Send>> {
    Ok(match format {
        Format::Plain => Box::new(raw),
        Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Format::Zstd => Box::new(zstd::stream::read::Decoder::new(raw)?),
        Format::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(raw)),
        Format::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(raw)),
    })
}

/// Reads until `buf` holds `n` bytes or the input ends.
pub fn read_up_to<R: Read + ?Sized>(r: &mut R, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    while buf.len() < n {
        let want = n - buf.len();
        let at = buf.len();
        buf.resize(at + want.min(64 << 10), 0);
        let got = loop {
            match r.read(&mut buf[at..]) {
                Ok(g) => break g,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    buf.truncate(at);
                    return Err(e);
                }
            }
        };
        buf.truncate(at + got);
        if got == 0 {
            break;
        }
    }
    Ok(())
}

/// What went wrong while decoding, in an operator's words.
pub fn describe_read_error(e: &io::Error, format: Format) -> String {
    if !format.is_compressed() {
        return format!("read failed: {e}");
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return format!("truncated {format} data: the file ends inside a compressed block (an interrupted copy or rotation?)");
    }
    format!("{format} data is corrupt: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode_all(raw: Vec<u8>) -> io::Result<Vec<u8>> {
        let f = sniff(&raw).unwrap();
        let mut out = Vec::new();
        decoder(io::Cursor::new(raw), f)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn every_format_round_trips_by_content_not_name() {
        let text = b"Mar 16 19:11:48 h p: one\nMar 16 19:11:49 h p: two\n".repeat(100);
        let zst = zstd::encode_all(&text[..], 3).unwrap();
        let mut xz = Vec::new();
        liblzma::read::XzEncoder::new(&text[..], 6).read_to_end(&mut xz).unwrap();
        let mut bz = Vec::new();
        bzip2::read::BzEncoder::new(&text[..], bzip2::Compression::fast()).read_to_end(&mut bz).unwrap();
        for (raw, f) in [(text.clone(), Format::Plain), (gz(&text), Format::Gzip), (zst, Format::Zstd), (xz, Format::Xz), (bz, Format::Bzip2)] {
            assert_eq!(sniff(&raw), Ok(f));
            assert_eq!(decode_all(raw).unwrap(), text, "{f}");
        }
    }

    #[test]
    fn multi_member_gzip_reads_every_member() {
        let mut raw = gz(b"a\n");
        raw.extend(gz(b"b\n"));
        assert_eq!(decode_all(raw).unwrap(), b"a\nb\n");
    }

    #[test]
    fn truncated_gzip_is_an_error_not_a_short_file() {
        let raw = gz(&b"Mar 16 19:11:48 h p: a line that compresses\n".repeat(1000));
        let cut = raw[..raw.len() / 2].to_vec();
        let e = decode_all(cut).unwrap_err();
        assert!(describe_read_error(&e, Format::Gzip).contains("truncated gzip"), "{e}");
    }

    #[test]
    fn unsupported_and_binary_inputs_are_named() {
        assert!(matches!(sniff(b"PK\x03\x04rest"), Err(NotSyslog::Known { what: "a zip archive", .. })));
        assert!(matches!(sniff(&[0x04, 0x22, 0x4d, 0x18, 0]), Err(NotSyslog::Known { what: "lz4 data", .. })));
        let mut tar = vec![b'x'; 300];
        tar[257..262].copy_from_slice(b"ustar");
        assert!(matches!(sniff(&tar), Err(NotSyslog::Known { what: "a tar archive", .. })));
        assert_eq!(check_text(b"ok\n\x00", Format::Plain), Err(NotSyslog::Binary { at: 3, decoded: "" }));
        assert!(check_text(b"plain text\n", Format::Gzip).is_ok());
        // Short inputs (an empty file, a one-byte file) are text.
        assert_eq!(sniff(b""), Ok(Format::Plain));
        assert_eq!(sniff(b"\x1f"), Ok(Format::Plain));
    }
}
