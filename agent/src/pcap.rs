//! The classic pcap file format (what tcpdump -w writes and every capture
//! tool reads): a 24-byte file header, then per packet a 16-byte record
//! header and the bytes kept. Written little-endian with microsecond
//! timestamps; readers tell the byte order from the magic number.

use std::time::{SystemTime, UNIX_EPOCH};

/// The magic number of microsecond-resolution pcap.
const MAGIC: u32 = 0xa1b2_c3d4;
/// LINKTYPE_ETHERNET: every device an emulation makes is Ethernet.
pub const LINKTYPE_ETHERNET: u32 = 1;
pub const FILE_HEADER_LEN: usize = 24;
pub const RECORD_HEADER_LEN: usize = 16;

/// The file header for packets of `linktype` cut at `snaplen` bytes.
pub fn file_header(snaplen: u32, linktype: u32) -> [u8; FILE_HEADER_LEN] {
    let mut header = [0u8; FILE_HEADER_LEN];
    header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..6].copy_from_slice(&2u16.to_le_bytes());
    header[6..8].copy_from_slice(&4u16.to_le_bytes());
    // thiszone and sigfigs stay 0.
    header[16..20].copy_from_slice(&snaplen.to_le_bytes());
    header[20..24].copy_from_slice(&linktype.to_le_bytes());
    header
}

/// Appends one packet's record to `out`: `kept` is what was captured of a
/// packet `original_len` bytes long, seen at `at`.
pub fn append_record(out: &mut Vec<u8>, at: SystemTime, kept: &[u8], original_len: usize) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    // pcap's seconds are 32 bits: good until 2106.
    let seconds = u32::try_from(since.as_secs()).unwrap_or(u32::MAX);
    let kept_len = u32::try_from(kept.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&seconds.to_le_bytes());
    out.extend_from_slice(&since.subsec_micros().to_le_bytes());
    out.extend_from_slice(&kept_len.to_le_bytes());
    out.extend_from_slice(&u32::try_from(original_len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(kept);
}

/// One packet read back from a pcap stream (for tests and tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seconds: u32,
    pub micros: u32,
    pub original_len: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PcapError {
    #[error("not a little-endian microsecond pcap stream (magic {0:#010x})")]
    Magic(u32),
    #[error("the stream ends inside a {0}")]
    Truncated(&'static str),
}

/// Reads a whole little-endian microsecond pcap stream: its link type and
/// its records.
pub fn parse(bytes: &[u8]) -> Result<(u32, Vec<Record>), PcapError> {
    let word =
        |at: usize| -> Option<u32> { bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes) };
    let magic = word(0).ok_or(PcapError::Truncated("file header"))?;
    if magic != MAGIC {
        return Err(PcapError::Magic(magic));
    }
    let linktype = word(20).ok_or(PcapError::Truncated("file header"))?;
    let mut records = Vec::new();
    let mut at = FILE_HEADER_LEN;
    while at < bytes.len() {
        let header = |i: usize| word(at + 4 * i).ok_or(PcapError::Truncated("record header"));
        let (seconds, micros, kept_len, original_len) = (header(0)?, header(1)?, header(2)?, header(3)?);
        let start = at + RECORD_HEADER_LEN;
        let data = usize::try_from(kept_len)
            .ok()
            .and_then(|len| bytes.get(start..start.checked_add(len)?))
            .ok_or(PcapError::Truncated("packet"))?;
        records.push(Record { seconds, micros, original_len, data: data.to_vec() });
        at = start + data.len();
    }
    Ok((linktype, records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_header_is_what_tcpdump_writes() {
        let header = file_header(262_144, LINKTYPE_ETHERNET);
        assert_eq!(header, [0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 1, 0, 0, 0],);
    }

    #[test]
    fn records_read_back_as_written() {
        let mut stream = file_header(64, LINKTYPE_ETHERNET).to_vec();
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        append_record(&mut stream, at, &[1, 2, 3], 3);
        append_record(&mut stream, at + Duration::from_secs(1), &[9; 64], 1500);
        let (linktype, records) = parse(&stream).expect("parse");
        assert_eq!(linktype, LINKTYPE_ETHERNET);
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[0],
            Record { seconds: 1_700_000_000, micros: 123_456, original_len: 3, data: vec![1, 2, 3] }
        );
        assert_eq!(records[1].seconds, 1_700_000_001);
        assert_eq!((records[1].original_len, records[1].data.len()), (1500, 64));
    }

    #[test]
    fn a_cut_stream_is_an_error_not_a_panic() {
        let mut stream = file_header(64, LINKTYPE_ETHERNET).to_vec();
        append_record(&mut stream, UNIX_EPOCH, &[7; 10], 10);
        for cut in 0..stream.len() {
            if cut == FILE_HEADER_LEN {
                continue;
            }
            assert!(parse(&stream[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(parse(&[0; 24]), Err(PcapError::Magic(0)));
    }
}
