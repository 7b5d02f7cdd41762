//! Property-based fuzzing (proptest) of what the messaging crate takes from
//! outside: the W3C `traceparent`, `tracestate` and `baggage` parsers, the
//! header extractor, and the decoding of every protobuf message a service
//! consumes (events, requests, replies, switches, alerts, span batches).
//!
//! Bounded for `cargo test` (proptest's 256 cases each); a longer run:
//! `PROPTEST_CASES=200000 cargo test --release -p tracehop-messaging --test fuzz`.

use std::str::FromStr as _;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use opentelemetry::trace::TraceContextExt as _;
use proptest::prelude::*;
use tracehop_messaging::headers;
use tracehop_messaging::w3c::{self, BaggagePolicy};
use tracehop_proto::v1;

/// The propagators every service installs (telemetry's `init`): without
/// them nothing is extracted, and the header properties would hold
/// vacuously.
fn install_propagators() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
        opentelemetry::global::set_text_map_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(
            vec![Box::new(TraceContextPropagator::new()), Box::new(BaggagePropagator::new())],
        ));
    });
}

/// Text near the grammar: hex, separators, the characters the W3C grammars
/// care about, and now and then anything at all.
fn near_w3c() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9a-fA-F\\-=,;@*/_ \\t]{0,80}",
        2 => "(0[0-9a-f]|ff)-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[0-9a-z]{0,8})?",
        1 => any::<String>(),
    ]
}

fn valid_traceparent() -> impl Strategy<Value = (String, String, String, String)> {
    ("[0-9a-e][0-9a-f]", "[0-9a-f]{32}", "[0-9a-f]{16}", "[0-9a-f]{2}")
        .prop_filter("ids are never all zeros", |(_, trace, parent, _)| {
            trace.bytes().any(|b| b != b'0') && parent.bytes().any(|b| b != b'0')
        })
}

/// Protobuf wire format with random field numbers, wire types and values:
/// it gets past the first byte, so decoding goes deep.
fn protobuf_like() -> impl Strategy<Value = Vec<u8>> {
    let field = (1u32..20, 0u8..6, proptest::collection::vec(any::<u8>(), 0..24), any::<u64>());
    prop_oneof![
        3 => proptest::collection::vec(field, 0..12).prop_map(|fields| {
            let mut out = Vec::new();
            for (number, wire, bytes, int) in fields {
                prost::encoding::encode_key(number, wire_type(wire), &mut out);
                match wire {
                    0 => prost::encoding::encode_varint(int, &mut out),
                    1 => out.extend_from_slice(&int.to_le_bytes()),
                    5 => out.extend_from_slice(&(int as u32).to_le_bytes()),
                    _ => {
                        prost::encoding::encode_varint(bytes.len() as u64, &mut out);
                        out.extend_from_slice(&bytes);
                    }
                }
            }
            out
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

fn wire_type(wire: u8) -> prost::encoding::WireType {
    use prost::encoding::WireType;
    match wire {
        0 => WireType::Varint,
        1 => WireType::SixtyFourBit,
        5 => WireType::ThirtyTwoBit,
        3 => WireType::StartGroup,
        4 => WireType::EndGroup,
        _ => WireType::LengthDelimited,
    }
}

/// Decodes `bytes` as `T` through the consumers' path, and when it decodes,
/// checks that it encodes back to a message that decodes the same.
fn decode_round_trip<T: prost::Message + prost::Name + Default + PartialEq>(bytes: &[u8]) {
    let mut headers = HeaderMap::new();
    headers.insert(headers::PAYLOAD_TYPE, T::full_name().as_str());
    if let Ok(message) = tracehop_messaging::consume::decode_payload::<T>(Some(&headers), bytes) {
        let again = T::decode(message.encode_to_vec().as_slice()).expect("a re-encoded message decodes");
        assert!(again == message, "{} does not survive a round trip", T::full_name());
    }
}

proptest! {
    #[test]
    fn traceparent_never_panics_and_accepts_only_version_00_shapes(values in proptest::collection::vec(near_w3c(), 0..3)) {
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        if let Some(normalized) = w3c::traceparent(&refs) {
            prop_assert_eq!(refs.len(), 1);
            prop_assert!(headers::is_valid_traceparent(&normalized));
            prop_assert_eq!(w3c::traceparent(&[normalized.as_str()]), Some(normalized.clone()));
            prop_assert!(normalized.starts_with("00-") && normalized.len() == 55, "{}", normalized);
        }
    }

    #[test]
    fn a_well_formed_traceparent_is_taken(
        (version, trace, parent, flags) in valid_traceparent(),
        padding in "[ \\t]{0,3}",
    ) {
        let value = format!("{padding}{version}-{trace}-{parent}-{flags}{padding}");
        prop_assert_eq!(w3c::traceparent(&[value.as_str()]), Some(format!("00-{trace}-{parent}-{flags}")));
    }

    #[test]
    fn tracestate_and_baggage_never_panic(
        values in proptest::collection::vec(near_w3c(), 0..4),
        keys in proptest::collection::vec("[a-z]{1,6}", 0..3),
    ) {
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        if let Some(state) = w3c::tracestate(&refs) {
            // What is passed on parses again as itself.
            prop_assert_eq!(w3c::tracestate(&[state.as_str()]), Some(state.clone()));
        }
        let policy = BaggagePolicy { allowed_keys: keys, max_bytes: 64 };
        if let Some(baggage) = w3c::baggage(&refs, &policy) {
            prop_assert!(baggage.len() <= 64);
        }
    }

    #[test]
    fn the_header_extractor_takes_any_headers(
        pairs in proptest::collection::vec(
            (prop_oneof!["traceparent", "tracestate", "baggage", "Traceparent", ".{0,12}"], near_w3c()),
            0..6,
        ),
    ) {
        install_propagators();
        let mut map = HeaderMap::new();
        for (name, value) in &pairs {
            // Names and values from outside are parsed, never trusted.
            if let (Ok(name), Ok(value)) = (HeaderName::from_str(name), HeaderValue::from_str(value)) {
                map.append(name, value);
            }
        }
        let context = headers::extract(Some(&map));
        let span = context.span();
        let span_context = span.span_context();
        let values: Vec<&str> = map.get_all("traceparent").map(|v| v.as_str()).collect();
        // Exactly what the W3C parser takes, no more and no less.
        match w3c::traceparent(&values) {
            Some(traceparent) => {
                prop_assert!(span_context.is_valid(), "no context from {:?}", values);
                prop_assert!(traceparent.contains(&span_context.trace_id().to_string()));
            }
            None => prop_assert!(!span_context.is_valid(), "a context from {:?}", values),
        }
    }

    #[test]
    fn two_traceparents_start_a_new_trace(first in valid_traceparent(), second in valid_traceparent()) {
        install_propagators();
        let mut map = HeaderMap::new();
        for (version, trace, parent, flags) in [first, second] {
            map.append("traceparent", format!("{version}-{trace}-{parent}-{flags}").as_str());
        }
        let context = headers::extract(Some(&map));
        prop_assert!(!context.span().span_context().is_valid(), "continued one of two traceparents");
    }

    #[test]
    fn every_consumed_message_decodes_or_is_refused(bytes in protobuf_like()) {
        decode_round_trip::<v1::OrderEvent>(&bytes);
        decode_round_trip::<v1::PlaceOrderRequest>(&bytes);
        decode_round_trip::<v1::PlaceOrderReply>(&bytes);
        decode_round_trip::<v1::GetOrderRequest>(&bytes);
        decode_round_trip::<v1::GetOrderReply>(&bytes);
        decode_round_trip::<v1::ReserveStockRequest>(&bytes);
        decode_round_trip::<v1::ReserveStockReply>(&bytes);
        decode_round_trip::<v1::CommitStockRequest>(&bytes);
        decode_round_trip::<v1::CommitStockReply>(&bytes);
        decode_round_trip::<v1::ReleaseStockRequest>(&bytes);
        decode_round_trip::<v1::ReleaseStockReply>(&bytes);
        decode_round_trip::<v1::GetPricesRequest>(&bytes);
        decode_round_trip::<v1::GetPricesReply>(&bytes);
        decode_round_trip::<v1::ChargeRequest>(&bytes);
        decode_round_trip::<v1::ChargeReply>(&bytes);
        decode_round_trip::<v1::AnalyticsSummaryRequest>(&bytes);
        decode_round_trip::<v1::AnalyticsSummaryReply>(&bytes);
        decode_round_trip::<v1::SentinelStatusRequest>(&bytes);
        decode_round_trip::<v1::SentinelStatusReply>(&bytes);
        decode_round_trip::<v1::KeeperStatsRequest>(&bytes);
        decode_round_trip::<v1::KeeperStatsReply>(&bytes);
        decode_round_trip::<v1::ReplayRequest>(&bytes);
        decode_round_trip::<v1::ReplayReply>(&bytes);
        decode_round_trip::<v1::ReplayProgress>(&bytes);
        decode_round_trip::<v1::ScenarioSwitch>(&bytes);
        decode_round_trip::<v1::Alert>(&bytes);
        // The order service checks every rule again on what it decodes.
        if let Ok(request) = <v1::PlaceOrderRequest as prost::Message>::decode(bytes.as_slice()) {
            let _ = request.validate();
        }
        // Span batches from the feed.
        let _ = tracehop_spanfeed::decode_spans(&bytes);
    }

    #[test]
    fn a_payload_of_the_wrong_type_is_refused_whatever_it_holds(bytes in protobuf_like(), name in ".{0,40}") {
        let mut map = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&name) {
            map.insert(headers::PAYLOAD_TYPE, value);
            let decoded = tracehop_messaging::consume::decode_payload::<v1::OrderEvent>(Some(&map), &bytes);
            if name != "tracehop.v1.OrderEvent" {
                prop_assert!(decoded.is_err());
            }
        }
    }
}
