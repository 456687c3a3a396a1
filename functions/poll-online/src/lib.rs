//! `GET /api/v1/communication/poll/online/?user_ids=1,2,3` — who is online.
//!
//! A user is online while their presence queue exists: declared by each poll, expiring
//! five minutes after the last one, deleted by disconnect. Any signed-in user may ask
//! about up to 100 users at once. A caller whose token names a college sees the presence
//! of that college's members only (anyone else answers `false`); a caller without a
//! college sees everyone's.

use lambda_http::{
    Body, Error, Request, Response,
    http::{Method, StatusCode},
};
use longpoll::{
    App,
    http::{ApiError, json_response, now_seconds, query_param, require_method, respond},
    routes::Route,
    topology::UserId,
};
use serde_json::{Map, Value, json};

/// Most users one lookup may ask about.
pub const MAX_USER_IDS: usize = 100;

/// Where this function is served.
pub const ROUTE: Route = Route {
    method: Method::GET,
    path: "/api/v1/communication/poll/online/",
    function: "poll-online",
};

/// The Lambda handler; also mounted by the local server.
pub async fn handle(app: &App, request: Request) -> Result<Response<Body>, Error> {
    respond(online(app, &request).await)
}

async fn online(app: &App, request: &Request) -> Result<Response<Body>, ApiError> {
    require_method(request, ROUTE.method)?;
    let caller = app.authenticate(request)?;
    let users = parse_user_ids(query_param(request, "user_ids").as_deref())?;
    // A member of a college sees its members only; a caller without one, anyone.
    let online = app.presence.is_online(&users, caller.college_id).await?;
    let online: Map<String, Value> = users
        .iter()
        .zip(online)
        .map(|(user, online)| (user.to_string(), Value::Bool(online)))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"online": online, "timestamp": now_seconds()}),
    ))
}

/// `1,2,3` → the users, in order, without repeats.
fn parse_user_ids(text: Option<&str>) -> Result<Vec<UserId>, ApiError> {
    let text = text.filter(|text| !text.trim().is_empty()).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_user_ids",
            "give `user_ids`, a comma-separated list of user ids",
        )
    })?;
    let mut users = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let user = part
            .parse::<u64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_user_ids",
                    format!("`{part}` in `user_ids` is not a user id"),
                )
            })?;
        if !users.contains(&UserId(user)) {
            users.push(UserId(user));
        }
    }
    if users.len() > MAX_USER_IDS {
        return Err(ApiError::bad_request(
            "invalid_user_ids",
            format!("{} user ids; at most {MAX_USER_IDS} a request", users.len()),
        ));
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_parsed_in_order_without_repeats() {
        assert_eq!(
            parse_user_ids(Some("3, 1,3,2")).unwrap(),
            [UserId(3), UserId(1), UserId(2)]
        );
    }

    #[test]
    fn junk_is_refused_by_name() {
        for junk in [
            None,
            Some(""),
            Some("1,,2"),
            Some("1,x"),
            Some("0"),
            Some("-1"),
            Some("1.5"),
        ] {
            let error = parse_user_ids(junk).unwrap_err();
            assert_eq!(error.code(), "invalid_user_ids", "{junk:?}");
        }
        let many: Vec<String> = (1..=101).map(|n| n.to_string()).collect();
        assert!(
            parse_user_ids(Some(&many.join(",")))
                .unwrap_err()
                .to_string()
                .contains("at most 100")
        );
    }
}
