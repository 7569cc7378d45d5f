//! One table from HTTP/2 failures to the statuses a caller sees, for both directions:
//! a reset keeps the code gRPC's HTTP/2 mapping gives its reason, and a lost connection
//! is UNAVAILABLE; and the statuses of a call gatehouse itself ends as it shuts down.

use super::{Code, Reason, Status};

/// Who is on the far side of the stream that failed.
#[derive(Clone, Copy, Debug)]
pub enum Far<'a> {
    /// The app behind this gatehouse.
    App,
    /// An outbound destination, by name.
    Destination(&'a str),
}

impl Far<'_> {
    /// How messages name it: "the app", or the destination's name.
    pub fn who(&self) -> &str {
        match self {
            Far::App => "the app",
            Far::Destination(name) => name,
        }
    }

    /// `status`, naming the destination in its details when there is one.
    fn named(&self, status: Status) -> Status {
        match self {
            Far::App => status,
            Far::Destination(name) => status.with("destination", *name),
        }
    }
}

/// The status for a call whose stream gatehouse reset because the app or destination
/// stopped reading its request: `reason` says which rule ended it, `why` what happened.
pub fn not_read(reason: Reason, far: Far<'_>, why: &dyn std::fmt::Display) -> Status {
    far.named(Status::new(
        reason,
        format!("{} {why}; gatehouse reset the call's stream", far.who()),
    ))
}

/// The status for a stream to the app or a destination that failed `when` ("before the
/// app answered", "while streaming the response"): its reset reason mapped as the gRPC
/// HTTP/2 mapping says, or UNAVAILABLE when the connection was lost.
pub fn stream_failure(error: &h2::Error, far: Far<'_>, when: &str) -> Status {
    let who = far.who();
    let (reset, lost) = match far {
        Far::App => (Reason::AppResetStream, Reason::AppUnavailable),
        Far::Destination(_) => (
            Reason::DestinationResetStream,
            Reason::DestinationUnavailable,
        ),
    };
    if headers_too_large(error) {
        return far.named(Status::new(
            Reason::ResponseHeadersTooLarge,
            format!("{who} answered with headers or trailers larger than gatehouse reads {when}"),
        ));
    }
    let status = match error
        .reason()
        .filter(|_| error.is_remote() && error.is_reset())
    {
        Some(reason) => Status::reset(
            reset,
            reason,
            format!("{who} reset the stream {when}: {reason}"),
        ),
        None => Status::new(lost, format!("connection to {who} lost {when}: {error}")),
    };
    far.named(status)
}

/// Whether h2 refused the peer's header block for its size: an answer over the
/// connection's `max_header_list_size` has its stream reset by h2 itself with
/// REFUSED_STREAM (no other local reset carries that reason), and a block spread over
/// more CONTINUATION frames than that size allows, or far over it, closes the connection
/// with ENHANCE_YOUR_CALM and one of two debug strings (vendor/check pins the h2 that
/// writes them).
fn headers_too_large(error: &h2::Error) -> bool {
    if error.is_remote() {
        return false;
    }
    if error.is_reset() && error.reason() == Some(h2::Reason::REFUSED_STREAM) {
        return true;
    }
    error.is_go_away()
        && error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
        && ["too_many_continuations", "header_list_way_too_large"]
            .iter()
            .any(|debug| error.to_string().contains(debug))
}

/// The gRPC status a caller should see when an HTTP/2 stream was reset with `reason`,
/// following the gRPC HTTP/2 protocol mapping.
pub fn code_for_reset(reason: h2::Reason) -> Code {
    match reason {
        h2::Reason::REFUSED_STREAM => Code::Unavailable,
        h2::Reason::CANCEL => Code::Cancelled,
        h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
        h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
        _ => Code::Internal,
    }
}

impl Status {
    /// Names the call in the details: its method and, outbound, its destination.
    pub fn about(self, uri: &http::Uri, destination: Option<&str>) -> Status {
        let status = self.with("method", uri.path());
        match destination {
            Some(destination) => status.with("destination", destination),
            None => status,
        }
    }

    /// An outbound call whose inbound call (under `credentials: context`) has ended.
    pub fn inbound_call_ended() -> Status {
        Status::new(
            Reason::InboundCallEnded,
            "the inbound call this call serves has ended, so this call ends too",
        )
    }

    /// A call still open when the drain timeout ran out.
    pub fn shutting_down() -> Status {
        Status::new(
            Reason::ShuttingDown,
            "gatehouse is shutting down: the drain timeout ended this call",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_is_unavailable_naming_who_was_lost() {
        let error = h2::Error::from(h2::Reason::INTERNAL_ERROR);
        let app = stream_failure(&error, Far::App, "before the app answered");
        assert_eq!(app.code(), Code::Unavailable);
        assert_eq!(app.reason(), Reason::AppUnavailable);
        assert!(
            app.message()
                .starts_with("connection to the app lost before the app answered: "),
            "{}",
            app.message()
        );
        let far = stream_failure(&error, Far::Destination("audit"), "while streaming");
        assert_eq!(far.reason(), Reason::DestinationUnavailable);
        assert!(
            far.message()
                .starts_with("connection to audit lost while streaming")
        );
    }

    #[test]
    fn resets_map_to_the_codes_of_grpcs_http2_mapping() {
        assert_eq!(
            code_for_reset(h2::Reason::REFUSED_STREAM),
            Code::Unavailable
        );
        assert_eq!(code_for_reset(h2::Reason::CANCEL), Code::Cancelled);
        assert_eq!(
            code_for_reset(h2::Reason::ENHANCE_YOUR_CALM),
            Code::ResourceExhausted
        );
        assert_eq!(code_for_reset(h2::Reason::PROTOCOL_ERROR), Code::Internal);
    }
}
