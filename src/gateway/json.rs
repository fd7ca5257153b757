//! The JSON side of etcd's HTTP gateway (grpc-gateway 1.x as etcd 3.4 configures it):
//! which HTTP path calls which gRPC method, and how protobuf messages read and write as
//! JSON.
//!
//! etcd's gateway marshals with golang/protobuf's `jsonpb` and `OrigName: true`: fields
//! under their proto names (`create_revision`, `ID`, `grantedTTL`), in declaration order,
//! zero values and empty lists left out, 64-bit integers as strings, bytes as standard
//! base64, enums by name. Requests may name fields by their proto or their lowerCamel JSON
//! names, give integers as numbers or strings and enums by name or number; unknown fields
//! are ignored. This module does the same for any message of the compiled descriptors,
//! so every route shares one converter and the gRPC services answer every request.
//!
//! Nothing here depends on the runtime: the runtime seam serves HTTP and calls these.

use base64::Engine as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, MethodDescriptor,
    ReflectMessage, Value,
};

/// What kind of call a route makes, which decides how bodies are read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// One request object, one response object.
    Unary,
    /// One request object, a stream of `{"result":...}` lines.
    ServerStream,
    /// A stream of request objects (the body), a stream of `{"result":...}` lines.
    BidiStream,
}

/// One gateway route: the gRPC method an HTTP path calls.
#[derive(Debug, Clone)]
pub struct Route {
    /// The gRPC request path, `/package.Service/Method`.
    pub grpc_path: String,
    /// The method, with its input and output message types.
    pub method: MethodDescriptor,
    /// How the call streams.
    pub kind: CallKind,
}

/// The paths etcd 3.4's gateway serves under `/v3/` (and `/v3beta/`), with the service
/// and method each calls. `hashkv`, `auth/status` and `downgrade` are absent, as in
/// etcd 3.4, whose gateway answers them with 404.
const ROUTES: &[(&str, &str, &str)] = &[
    ("kv/range", "etcdserverpb.KV", "Range"),
    ("kv/put", "etcdserverpb.KV", "Put"),
    ("kv/deleterange", "etcdserverpb.KV", "DeleteRange"),
    ("kv/txn", "etcdserverpb.KV", "Txn"),
    ("kv/compaction", "etcdserverpb.KV", "Compact"),
    ("watch", "etcdserverpb.Watch", "Watch"),
    ("lease/grant", "etcdserverpb.Lease", "LeaseGrant"),
    ("lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("kv/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("lease/keepalive", "etcdserverpb.Lease", "LeaseKeepAlive"),
    ("lease/timetolive", "etcdserverpb.Lease", "LeaseTimeToLive"),
    (
        "kv/lease/timetolive",
        "etcdserverpb.Lease",
        "LeaseTimeToLive",
    ),
    ("lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("kv/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("cluster/member/add", "etcdserverpb.Cluster", "MemberAdd"),
    (
        "cluster/member/remove",
        "etcdserverpb.Cluster",
        "MemberRemove",
    ),
    (
        "cluster/member/update",
        "etcdserverpb.Cluster",
        "MemberUpdate",
    ),
    ("cluster/member/list", "etcdserverpb.Cluster", "MemberList"),
    (
        "cluster/member/promote",
        "etcdserverpb.Cluster",
        "MemberPromote",
    ),
    ("maintenance/alarm", "etcdserverpb.Maintenance", "Alarm"),
    ("maintenance/status", "etcdserverpb.Maintenance", "Status"),
    (
        "maintenance/defragment",
        "etcdserverpb.Maintenance",
        "Defragment",
    ),
    ("maintenance/hash", "etcdserverpb.Maintenance", "Hash"),
    (
        "maintenance/snapshot",
        "etcdserverpb.Maintenance",
        "Snapshot",
    ),
    (
        "maintenance/transfer-leadership",
        "etcdserverpb.Maintenance",
        "MoveLeader",
    ),
    ("auth/enable", "etcdserverpb.Auth", "AuthEnable"),
    ("auth/disable", "etcdserverpb.Auth", "AuthDisable"),
    ("auth/authenticate", "etcdserverpb.Auth", "Authenticate"),
    ("auth/user/add", "etcdserverpb.Auth", "UserAdd"),
    ("auth/user/get", "etcdserverpb.Auth", "UserGet"),
    ("auth/user/list", "etcdserverpb.Auth", "UserList"),
    ("auth/user/delete", "etcdserverpb.Auth", "UserDelete"),
    (
        "auth/user/changepw",
        "etcdserverpb.Auth",
        "UserChangePassword",
    ),
    ("auth/user/grant", "etcdserverpb.Auth", "UserGrantRole"),
    ("auth/user/revoke", "etcdserverpb.Auth", "UserRevokeRole"),
    ("auth/role/add", "etcdserverpb.Auth", "RoleAdd"),
    ("auth/role/get", "etcdserverpb.Auth", "RoleGet"),
    ("auth/role/list", "etcdserverpb.Auth", "RoleList"),
    ("auth/role/delete", "etcdserverpb.Auth", "RoleDelete"),
    (
        "auth/role/grant",
        "etcdserverpb.Auth",
        "RoleGrantPermission",
    ),
    (
        "auth/role/revoke",
        "etcdserverpb.Auth",
        "RoleRevokePermission",
    ),
    ("lock/lock", "v3lockpb.Lock", "Lock"),
    ("lock/unlock", "v3lockpb.Lock", "Unlock"),
    ("election/campaign", "v3electionpb.Election", "Campaign"),
    ("election/proclaim", "v3electionpb.Election", "Proclaim"),
    ("election/leader", "v3electionpb.Election", "Leader"),
    ("election/observe", "v3electionpb.Election", "Observe"),
    ("election/resign", "v3electionpb.Election", "Resign"),
];

/// The route for an HTTP request path, if the gateway serves it.
pub fn route(path: &str) -> Option<Route> {
    let rest = path
        .strip_prefix("/v3/")
        .or_else(|| path.strip_prefix("/v3beta/"))?;
    let (_, service, method) = ROUTES.iter().find(|(p, _, _)| *p == rest)?;
    let pool = crate::metrics::descriptors()?;
    let method_desc = pool
        .get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == *method)?;
    let kind = match (
        method_desc.is_client_streaming(),
        method_desc.is_server_streaming(),
    ) {
        (false, false) => CallKind::Unary,
        (false, true) => CallKind::ServerStream,
        _ => CallKind::BidiStream,
    };
    Some(Route {
        grpc_path: format!("/{service}/{method}"),
        method: method_desc,
        kind,
    })
}

/// Reads a request message from JSON. An empty body is the empty message, as in
/// grpc-gateway.
pub fn request_from_json(desc: &MessageDescriptor, body: &[u8]) -> Result<Vec<u8>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let msg = message_from_json(desc, &value)?;
    Ok(prost::Message::encode_to_vec(&msg))
}

/// Converts one JSON value into a message of type `desc`.
pub fn message_from_json(
    desc: &MessageDescriptor,
    value: &serde_json::Value,
) -> Result<DynamicMessage, String> {
    let mut msg = DynamicMessage::new(desc.clone());
    let obj = match value {
        serde_json::Value::Object(o) => o,
        serde_json::Value::Null => return Ok(msg),
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into Go value of type {}",
                json_type(other),
                go_type(desc)
            ))
        }
    };
    for (name, v) in obj {
        let field = desc
            .get_field_by_name(name)
            .or_else(|| desc.get_field_by_json_name(name));
        // grpc-gateway 1.x lets unknown fields through.
        let Some(field) = field else { continue };
        if v.is_null() {
            continue;
        }
        let value = if field.is_list() {
            let serde_json::Value::Array(items) = v else {
                return Err(format!(
                    "bad value in field {:?}: expected an array",
                    field.name()
                ));
            };
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                list.push(scalar_from_json(&field, &field.kind(), item)?);
            }
            Value::List(list)
        } else if field.is_map() {
            let serde_json::Value::Object(entries) = v else {
                return Err(format!(
                    "bad value in field {:?}: expected an object",
                    field.name()
                ));
            };
            let Kind::Message(entry) = field.kind() else {
                return Err(format!("bad map field {:?}", field.name()));
            };
            let key_field = entry.map_entry_key_field();
            let value_field = entry.map_entry_value_field();
            let mut map = std::collections::HashMap::new();
            for (k, item) in entries {
                let key = match scalar_from_json(
                    &key_field,
                    &key_field.kind(),
                    &serde_json::Value::String(k.clone()),
                )? {
                    Value::String(s) => MapKey::String(s),
                    Value::I32(n) => MapKey::I32(n),
                    Value::I64(n) => MapKey::I64(n),
                    Value::U32(n) => MapKey::U32(n),
                    Value::U64(n) => MapKey::U64(n),
                    Value::Bool(b) => MapKey::Bool(b),
                    _ => return Err(format!("bad map key in field {:?}", field.name())),
                };
                map.insert(
                    key,
                    scalar_from_json(&value_field, &value_field.kind(), item)?,
                );
            }
            Value::Map(map)
        } else {
            scalar_from_json(&field, &field.kind(), v)?
        };
        msg.try_set_field(&field, value)
            .map_err(|e| format!("bad value in field {:?}: {e}", field.name()))?;
    }
    Ok(msg)
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

fn go_type(desc: &MessageDescriptor) -> String {
    format!("{}.{}", desc.package_name(), desc.name())
}

/// Reads one (non-repeated) value of kind `kind` for `field`.
fn scalar_from_json(
    field: &FieldDescriptor,
    kind: &Kind,
    v: &serde_json::Value,
) -> Result<Value, String> {
    let bad = || {
        format!(
            "bad value in field {:?}: cannot read {} as {:?}",
            field.name(),
            json_type(v),
            kind
        )
    };
    // jsonpb accepts integers as numbers or as decimal strings.
    let int_text = || -> Option<String> {
        match v {
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::String(s) => Some(s.clone()),
            _ => None,
        }
    };
    let parse_i64 = || -> Result<i64, String> {
        let t = int_text().ok_or_else(bad)?;
        t.parse::<i64>()
            .or_else(|_| {
                // 1e3 and 5.0 are integers too, when exact.
                t.parse::<f64>()
                    .ok()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                    .map(|f| f as i64)
                    .ok_or(())
            })
            .map_err(|()| bad())
    };
    let parse_u64 = || -> Result<u64, String> {
        let t = int_text().ok_or_else(bad)?;
        t.parse::<u64>()
            .or_else(|_| {
                t.parse::<f64>()
                    .ok()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1.8e19)
                    .map(|f| f as u64)
                    .ok_or(())
            })
            .map_err(|()| bad())
    };
    Ok(match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(i32::try_from(parse_i64()?).map_err(|_| bad())?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(parse_i64()?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(u32::try_from(parse_u64()?).map_err(|_| bad())?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(parse_u64()?),
        Kind::Float | Kind::Double => {
            let f = match v {
                serde_json::Value::Number(n) => n.as_f64().ok_or_else(bad)?,
                serde_json::Value::String(s) => s.parse::<f64>().map_err(|_| bad())?,
                _ => return Err(bad()),
            };
            if matches!(kind, Kind::Float) {
                Value::F32(f as f32)
            } else {
                Value::F64(f)
            }
        }
        Kind::Bool => match v {
            serde_json::Value::Bool(b) => Value::Bool(*b),
            _ => return Err(bad()),
        },
        Kind::String => match v {
            serde_json::Value::String(s) => Value::String(s.clone()),
            _ => return Err(bad()),
        },
        Kind::Bytes => match v {
            serde_json::Value::String(s) => {
                let engine = base64::engine::general_purpose::STANDARD;
                let url = base64::engine::general_purpose::URL_SAFE;
                let bytes = engine
                    .decode(s)
                    .or_else(|_| url.decode(s))
                    .map_err(|e| format!("illegal base64 data in field {:?}: {e}", field.name()))?;
                Value::Bytes(bytes.into())
            }
            _ => return Err(bad()),
        },
        Kind::Enum(e) => match v {
            serde_json::Value::String(s) => match e.get_value_by_name(s) {
                Some(value) => Value::EnumNumber(value.number()),
                None => return Err(format!("unknown value {s:?} for enum {}", e.full_name())),
            },
            serde_json::Value::Number(_) => {
                Value::EnumNumber(i32::try_from(parse_i64()?).map_err(|_| bad())?)
            }
            _ => return Err(bad()),
        },
        Kind::Message(m) => Value::Message(message_from_json(m, v)?),
    })
}

/// Writes a response message (protobuf bytes of type `desc`) as etcd's gateway does.
pub fn response_to_json(desc: &MessageDescriptor, bytes: &[u8]) -> Result<String, String> {
    let msg = DynamicMessage::decode(desc.clone(), bytes).map_err(|e| e.to_string())?;
    let mut out = String::new();
    message_to_json(&msg, &mut out);
    Ok(out)
}

/// Appends `msg` as JSON to `out`.
pub fn message_to_json(msg: &DynamicMessage, out: &mut String) {
    out.push('{');
    let mut first = true;
    for field in msg.descriptor().fields() {
        if !msg.has_field(&field) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        push_string(out, field.name());
        out.push(':');
        let value = msg.get_field(&field);
        match value.as_ref() {
            Value::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    value_to_json(item, &field.kind(), out);
                }
                out.push(']');
            }
            Value::Map(entries) => {
                // Go writes map keys sorted.
                let mut keys: Vec<(String, &Value)> = entries
                    .iter()
                    .map(|(k, v)| {
                        let key = match k {
                            MapKey::Bool(b) => b.to_string(),
                            MapKey::I32(n) => n.to_string(),
                            MapKey::I64(n) => n.to_string(),
                            MapKey::U32(n) => n.to_string(),
                            MapKey::U64(n) => n.to_string(),
                            MapKey::String(s) => s.clone(),
                        };
                        (key, v)
                    })
                    .collect();
                keys.sort_by(|a, b| a.0.cmp(&b.0));
                let value_kind = match field.kind() {
                    Kind::Message(entry) => entry.map_entry_value_field().kind(),
                    other => other,
                };
                out.push('{');
                for (i, (k, v)) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    push_string(out, k);
                    out.push(':');
                    value_to_json(v, &value_kind, out);
                }
                out.push('}');
            }
            v => value_to_json(v, &field.kind(), out),
        }
    }
    out.push('}');
}

fn value_to_json(v: &Value, kind: &Kind, out: &mut String) {
    use std::fmt::Write as _;
    match v {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::I32(n) => {
            let _ = write!(out, "{n}");
        }
        Value::U32(n) => {
            let _ = write!(out, "{n}");
        }
        Value::I64(n) => {
            let _ = write!(out, "\"{n}\"");
        }
        Value::U64(n) => {
            let _ = write!(out, "\"{n}\"");
        }
        Value::F32(f) => push_float(out, f64::from(*f)),
        Value::F64(f) => push_float(out, *f),
        Value::String(s) => push_string(out, s),
        Value::Bytes(b) => {
            out.push('"');
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(b));
            out.push('"');
        }
        Value::EnumNumber(n) => {
            let name = match kind {
                Kind::Enum(e) => e.get_value(*n).map(|v| v.name().to_string()),
                _ => None,
            };
            match name {
                Some(name) => push_string(out, &name),
                None => {
                    let _ = write!(out, "{n}");
                }
            }
        }
        Value::Message(m) => message_to_json(m, out),
        Value::List(_) | Value::Map(_) => out.push_str("null"),
    }
}

fn push_float(out: &mut String, f: f64) {
    if f.is_finite() {
        out.push_str(&f.to_string());
    } else if f.is_nan() {
        out.push_str("\"NaN\"");
    } else if f > 0.0 {
        out.push_str("\"Infinity\"");
    } else {
        out.push_str("\"-Infinity\"");
    }
}

/// Appends `s` as a JSON string, escaped as Go's encoding/json escapes it, so bodies
/// match etcd's byte for byte.
pub fn push_string(out: &mut String, s: &str) {
    crate::gojson::push_string(out, s, crate::gojson::Html::Escape);
}

/// The HTTP status grpc-gateway 1.x answers a gRPC status code with.
pub fn http_status(code: i32) -> u16 {
    match code {
        0 => 200,
        1 => 408,
        2 => 500,
        3 => 400,
        4 => 504,
        5 => 404,
        6 => 409,
        7 => 403,
        8 => 429,
        9 => 412,
        10 => 409,
        11 => 400,
        12 => 501,
        13 => 500,
        14 => 503,
        15 => 500,
        16 => 401,
        _ => 500,
    }
}

/// The body of a failed unary call: `{"error":...,"message":...,"code":N}`.
pub fn error_body(code: i32, message: &str) -> String {
    let mut out = String::from("{\"error\":");
    push_string(&mut out, message);
    out.push_str(",\"message\":");
    push_string(&mut out, message);
    out.push_str(&format!(",\"code\":{code}}}"));
    out
}

/// The line a stream ends with when its call fails:
/// `{"error":{"grpc_code":N,"http_code":N,"message":...,"http_status":...}}`.
pub fn stream_error_line(code: i32, message: &str) -> String {
    let http = http_status(code);
    let mut out = String::from("{\"error\":{");
    if code != 0 {
        out.push_str(&format!("\"grpc_code\":{code},"));
    }
    out.push_str(&format!("\"http_code\":{http}"));
    if !message.is_empty() {
        out.push_str(",\"message\":");
        push_string(&mut out, message);
    }
    out.push_str(",\"http_status\":");
    push_string(&mut out, status_text(http));
    out.push_str("}}\n");
    out
}

/// The reason phrase Go's `http.StatusText` gives for `status`.
pub fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        412 => "Precondition Failed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Splits a streamed request body into JSON values as they complete (a watch or
/// keep-alive body is a sequence of objects). The buffer holds at most one incomplete
/// value, and refuses to grow past `max_bytes`.
#[derive(Debug)]
pub struct JsonStream {
    buf: Vec<u8>,
    max_bytes: usize,
}

impl JsonStream {
    /// A splitter that buffers at most `max_bytes` of an incomplete value.
    pub fn new(max_bytes: usize) -> JsonStream {
        JsonStream {
            buf: Vec::new(),
            max_bytes,
        }
    }

    /// Adds body bytes and returns the values they complete, or the syntax error that
    /// ends the stream.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<serde_json::Value>, String> {
        self.buf.extend_from_slice(bytes);
        let mut values = Vec::new();
        let mut consumed = 0;
        {
            let mut it =
                serde_json::Deserializer::from_slice(&self.buf).into_iter::<serde_json::Value>();
            loop {
                match it.next() {
                    Some(Ok(v)) => {
                        values.push(v);
                        consumed = it.byte_offset();
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => {
                        consumed = it.byte_offset();
                        break;
                    }
                }
            }
        }
        self.buf.drain(..consumed);
        if self.buf.len() > self.max_bytes {
            return Err("request body too large".into());
        }
        Ok(values)
    }

    /// Ends the body: an incomplete value left over is an error, as Go's decoder reports.
    pub fn finish(&self) -> Result<(), String> {
        if self.buf.iter().all(u8::is_ascii_whitespace) {
            Ok(())
        } else {
            Err("unexpected EOF".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(name: &str) -> MessageDescriptor {
        crate::metrics::descriptors()
            .and_then(|p| p.get_message_by_name(name))
            .expect("descriptor")
    }

    #[test]
    fn routes_cover_both_prefixes_and_stream_kinds() {
        let r = route("/v3/kv/range").expect("range");
        assert_eq!(r.grpc_path, "/etcdserverpb.KV/Range");
        assert_eq!(r.kind, CallKind::Unary);
        assert_eq!(
            route("/v3beta/watch").expect("watch").kind,
            CallKind::BidiStream
        );
        assert_eq!(
            route("/v3/maintenance/snapshot").expect("snap").kind,
            CallKind::ServerStream
        );
        assert!(route("/v3/maintenance/hashkv").is_none());
        assert!(route("/v3alpha/kv/range").is_none());
        assert!(route("/v3/kv/range/").is_none());
    }

    #[test]
    fn requests_accept_proto_and_json_names_strings_and_numbers() {
        let d = desc("etcdserverpb.RangeRequest");
        let bytes = request_from_json(
            &d,
            br#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":"2","revision":3,"sort_order":"DESCEND","bogus":1,"serializable":true}"#,
        )
        .expect("decode");
        let r: crate::pb::etcdserverpb::RangeRequest =
            prost::Message::decode(&bytes[..]).expect("range");
        assert_eq!(r.key, b"foo");
        assert_eq!(r.range_end, b"fop");
        assert_eq!((r.limit, r.revision, r.sort_order), (2, 3, 2));
        assert!(r.serializable);
        assert!(request_from_json(&d, b"").expect("empty").is_empty());
        assert!(request_from_json(&d, br#"{"limit":"x"}"#).is_err());
        assert!(request_from_json(&d, br#"{"key":"%%%"}"#).is_err());
        assert!(request_from_json(&d, b"[1]").is_err());
        assert!(request_from_json(&d, b"{bad").is_err());
    }

    #[test]
    fn responses_use_proto_names_strings_for_64_bits_and_omit_zeros() {
        use crate::pb::etcdserverpb::{ResponseHeader, WatchResponse};
        use crate::pb::mvccpb::{event::EventType, Event, KeyValue};
        let resp = WatchResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 0,
            }),
            events: vec![
                Event {
                    r#type: EventType::Put as i32,
                    kv: Some(KeyValue {
                        key: b"a<".to_vec(),
                        mod_revision: 3,
                        ..Default::default()
                    }),
                    prev_kv: None,
                },
                Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue::default()),
                    prev_kv: None,
                },
            ],
            ..Default::default()
        };
        let json = response_to_json(
            &desc("etcdserverpb.WatchResponse"),
            &prost::Message::encode_to_vec(&resp),
        )
        .expect("json");
        assert_eq!(
            json,
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"3"},"events":[{"kv":{"key":"YTw=","mod_revision":"3"}},{"type":"DELETE","kv":{}}]}"#
        );
    }

    #[test]
    fn errors_look_like_grpc_gateway_errors() {
        assert_eq!(
            error_body(9, "etcdserver: a <b>"),
            r#"{"error":"etcdserver: a \u003cb\u003e","message":"etcdserver: a \u003cb\u003e","code":9}"#
        );
        assert_eq!(http_status(9), 412);
        assert_eq!(http_status(16), 401);
        assert_eq!(
            stream_error_line(7, "x"),
            "{\"error\":{\"grpc_code\":7,\"http_code\":403,\"message\":\"x\",\"http_status\":\"Forbidden\"}}\n"
        );
    }

    #[test]
    fn a_streamed_body_splits_into_values_in_any_chunks() {
        let mut s = JsonStream::new(1024);
        assert!(s.push(b"{\"a\":").expect("partial").is_empty());
        let v = s.push(b"1} {\"b\":2}\n{\"c\"").expect("two");
        assert_eq!(v.len(), 2);
        assert!(s.finish().is_err());
        let v = s.push(b":3}").expect("one");
        assert_eq!(v.len(), 1);
        assert!(s.finish().is_ok());
        assert!(s.push(b"}").is_err());
        let mut small = JsonStream::new(4);
        assert!(small.push(b"{\"aaaaaaa").is_err());
    }
}
