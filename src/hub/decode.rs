//! Typing untrusted payloads at the edge: size first, then shape.
//!
//! socketioxide's `Data<T>` silently skips a handler whose payload does not
//! parse, so a client asking for an acknowledgement would only time out. The
//! hub decodes every payload itself and turns each failure into a [`Refusal`]
//! saying what was wrong; oversized payloads are refused before parsing.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::TryData;
use socketioxide::handler::{FromMessageParts, Value};
use socketioxide::socket::Socket;

use crate::protocol::{ErrorCode, Refusal};

/// Decodes one event's payload into `T` if it is at most `max_bytes` long,
/// or says why it cannot.
pub fn decode<T: DeserializeOwned>(
    socket: &Arc<Socket<LocalAdapter>>,
    value: &mut Value,
    ack_id: &Option<i64>,
    max_bytes: usize,
) -> Result<T, Refusal> {
    let size = payload_size(value);
    if size > max_bytes {
        return Err(Refusal::new(
            ErrorCode::PayloadTooLarge,
            format!("payload is {size} bytes; the limit is {max_bytes} bytes"),
        ));
    }
    let Ok(TryData(parsed)) = TryData::<T>::from_message_parts(socket, value, ack_id);
    parsed.map_err(|error| Refusal::new(ErrorCode::InvalidPayload, error.to_string()))
}

/// The encoded size of a message's arguments, binary attachments included.
fn payload_size(value: &Value) -> usize {
    match value {
        Value::Str(text, binaries) => {
            text.len() + binaries.iter().flatten().map(|b| b.len()).sum::<usize>()
        }
        Value::Bytes(bytes) => bytes.len(),
    }
}
