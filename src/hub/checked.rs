//! `Checked<T>`: the extractor through which every event payload enters the hub.
//!
//! socketioxide's `Data<T>` silently skips the handler when a payload does not
//! parse, so a client asking for an acknowledgement would only time out. This
//! extractor always runs the handler, with either the typed payload or a
//! [`Refusal`] saying what was wrong, and refuses oversized payloads before
//! parsing them.

use std::convert::Infallible;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use socketioxide::adapter::Adapter;
use socketioxide::extract::TryData;
use socketioxide::handler::{FromMessageParts, Value};
use socketioxide::socket::Socket;

use crate::protocol::{ErrorCode, Refusal, limits};

/// A payload parsed into `T`, or the refusal to send back.
pub struct Checked<T>(pub Result<T, Refusal>);

impl<T: DeserializeOwned, A: Adapter> FromMessageParts<A> for Checked<T> {
    type Error = Infallible;

    fn from_message_parts(
        socket: &Arc<Socket<A>>,
        value: &mut Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        let size = payload_size(value);
        if size > limits::EVENT_BYTES {
            return Ok(Checked(Err(Refusal::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "payload is {size} bytes; the limit is {} bytes",
                    limits::EVENT_BYTES
                ),
            ))));
        }
        let TryData(parsed) = TryData::<T>::from_message_parts(socket, value, ack_id)?;
        Ok(Checked(parsed.map_err(|error| {
            Refusal::new(ErrorCode::InvalidPayload, error.to_string())
        })))
    }
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
