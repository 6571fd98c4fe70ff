//! Reading a request body: size limit, gzip with a cap on the decoded size.
//!
//! The body is JSON whatever the Content-Type says: analytics.js sends `text/plain` (to avoid a
//! CORS preflight), RudderStack's Node SDK sends gzip labelled
//! `application/x-www-form-urlencoded`.

use std::io::Read;

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::error::ApiError;

/// Compressed bodies larger than this are decoded on a blocking thread, not a tokio worker.
const INLINE_GUNZIP_BYTES: usize = 64 * 1024;

/// Reads the whole body, refusing more than `max` bytes before or after decoding.
pub async fn read(headers: &HeaderMap, body: Incoming, max: usize) -> Result<Bytes, ApiError> {
    // An announced length over the limit is refused after a bounded drain like any other
    // oversize body (answering before reading it would reset the client's connection).
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let raw = collect_limited(body, max)
        .await
        .map_err(|e| match announced {
            Some(len) if len > max as u64 => too_large(len, max),
            _ => e,
        })?;
    match encoding(headers, &raw)? {
        Encoding::Identity => Ok(raw),
        Encoding::Gzip if raw.len() <= INLINE_GUNZIP_BYTES => gunzip(&raw, max),
        Encoding::Gzip => tokio::task::spawn_blocking(move || gunzip(&raw, max))
            .await
            .map_err(|e| {
                ApiError::new(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("decoding the body failed: {e}"),
                )
            })?,
    }
}

/// How much of an oversize body is read and thrown away before answering 413, so a client that
/// streams it (no Content-Length) gets the answer instead of a reset connection.
const DRAIN_BYTES: usize = 4 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

async fn collect_limited(mut body: Incoming, max: usize) -> Result<Bytes, ApiError> {
    let mut buf = bytes::BytesMut::new();
    let read_error = |e: hyper::Error| {
        ApiError::bad_request(
            "incomplete_body",
            format!("the request body could not be read: {e}"),
        )
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(read_error)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                let mut drained = buf.len() + data.len();
                let _ = tokio::time::timeout(DRAIN_TIME, async {
                    while drained < max + DRAIN_BYTES {
                        match body.frame().await {
                            Some(Ok(f)) => drained += f.data_ref().map_or(0, |d| d.len()),
                            _ => break,
                        }
                    }
                })
                .await;
                return Err(ApiError::too_large(format!(
                    "the request body is over the limit of {max} bytes; send smaller batches"
                )));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

fn too_large(len: u64, max: usize) -> ApiError {
    ApiError::too_large(format!(
        "the request body is {len} bytes, over the limit of {max} bytes; send smaller batches"
    ))
}

enum Encoding {
    Identity,
    Gzip,
}

fn encoding(headers: &HeaderMap, body: &[u8]) -> Result<Encoding, ApiError> {
    let declared = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    match declared.as_deref() {
        None | Some("") | Some("identity") => {
            // Some clients gzip without saying so; JSON never starts with the gzip magic.
            if body.starts_with(&[0x1f, 0x8b]) {
                Ok(Encoding::Gzip)
            } else {
                Ok(Encoding::Identity)
            }
        }
        Some("gzip") | Some("x-gzip") => Ok(Encoding::Gzip),
        Some(other) => Err(ApiError::new(
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!("Content-Encoding `{other}` is not supported; send the body plain or gzip"),
        )),
    }
}

/// Decodes gzip, stopping as soon as the output passes `max` (a gzip bomb costs at most `max`
/// bytes of memory).
fn gunzip(raw: &[u8], max: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::with_capacity((raw.len() * 4).min(max + 1));
    let decoder = flate2::read::MultiGzDecoder::new(raw);
    match decoder.take(max as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > max => Err(ApiError::too_large(format!(
            "the gzip body decodes to more than the limit of {max} bytes; send smaller batches"
        ))),
        Ok(_) => Ok(Bytes::from(out)),
        Err(e) => Err(ApiError::bad_request(
            "invalid_gzip",
            format!("the body is not valid gzip: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_bomb_stops_at_the_cap() {
        let bomb = gz(&vec![b' '; 50 << 20]);
        assert!(bomb.len() < 100 << 10);
        let err = gunzip(&bomb, 4 << 20).unwrap_err();
        assert_eq!(err.code, "payload_too_large");
        assert_eq!(gunzip(&gz(b"{}"), 10).unwrap(), Bytes::from_static(b"{}"));
        assert_eq!(
            gunzip(b"\x1f\x8bnope", 10).unwrap_err().code,
            "invalid_gzip"
        );
    }
}
