//! Sign-in and sign-out.

use crate::components::{last_error, FormStatus, BUTTON, INPUT};
use crate::error::AppError;
use leptos::prelude::*;
use leptos_meta::Title;

/// Signs in. Failures never say whether the user exists, are throttled per account and per
/// address, and are logged.
#[server(endpoint = "login")]
pub async fn login(username: String, password: String) -> Result<(), AppError> {
    use crate::state::{app_state, session, SESSION_LOGIN_AT, SESSION_USER};
    use keystone_control::auth::authenticate;
    use keystone_control::store::now_ms;
    let state = app_state()?;
    let session = session().await?;
    let peer = leptos_axum::extract::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .await
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let headers = leptos_axum::extract::<axum::http::HeaderMap>().await.unwrap_or_default();
    let address = client_address(&headers, state.client_ip_header.as_deref()).unwrap_or(peer);
    let username = username.trim().to_owned();
    let too_many = |message: String| {
        if let Some(resp) = use_context::<leptos_axum::ResponseOptions>() {
            resp.set_status(axum::http::StatusCode::TOO_MANY_REQUESTS);
        }
        AppError::Refused(message)
    };
    // Counted before the password is checked: concurrent guesses cannot all pass the limit.
    let attempt = match state.limiter.begin(&state.platform.store, &username, &address).await? {
        Ok(attempt) => attempt,
        Err(wait) => {
            tracing::warn!(user = %username, address = %address, "Sign-in throttled.");
            state
                .platform
                .store
                .record_account_event(&username, &username, "sign-in throttled", &format!("from {address}"))
                .await;
            return Err(too_many(format!(
                "Too many failed sign-ins. Try again in {} minute(s).",
                wait.as_secs().div_ceil(60).max(1)
            )));
        }
    };
    let Some(_permit) = state.limiter.hashing_permit() else {
        tracing::warn!(user = %username, address = %address, "Sign-in refused: too many password checks at once.");
        return Err(too_many("Too many sign-ins at once. Try again in a moment.".into()));
    };
    let Some(p) = authenticate(&state.platform.store, &username, &password).await? else {
        tracing::warn!(user = %username, address = %address, "Sign-in failed.");
        state
            .platform
            .store
            .record_account_event(&username, &username, "sign-in failed", &format!("from {address}"))
            .await;
        return Err(AppError::Refused("Wrong username or password.".into()));
    };
    state.limiter.record_success(&state.platform.store, &username, attempt).await?;
    let internal = |_| AppError::Internal;
    // A fresh session id at sign-in defeats session fixation.
    session.cycle_id().await.map_err(internal)?;
    session.insert(SESSION_USER, &p.user_id).await.map_err(internal)?;
    session.insert(SESSION_LOGIN_AT, now_ms()).await.map_err(internal)?;
    tracing::info!(user = %username, "Signed in.");
    state.platform.store.record_account_event(&username, &username, "signed in", &format!("from {address}")).await;
    leptos_axum::redirect("/");
    Ok(())
}

/// The client's address as a trusted proxy reports it: the last entry of `header` (the one the
/// proxy itself added; earlier ones are whatever the client sent).
#[cfg(feature = "ssr")]
fn client_address(headers: &axum::http::HeaderMap, header: Option<&str>) -> Option<String> {
    let value = headers.get(header?)?.to_str().ok()?;
    let last = value.rsplit(',').next()?.trim();
    last.parse::<std::net::IpAddr>().ok().map(|ip| ip.to_string())
}

#[component]
pub fn LoginPage() -> impl IntoView {
    let login = ServerAction::<Login>::new();
    view! {
        <Title text="Sign in · Keystone"/>
        <main class="min-h-screen flex items-center justify-center bg-slate-900 px-4">
            <div class="w-full max-w-sm rounded-xl bg-white p-8 shadow-xl">
                <h1 class="text-xl font-semibold tracking-tight">"Sign in to Keystone"</h1>
                <p class="mt-1 mb-6 text-sm text-slate-500">"Streams, routes and sinks, declared and kept running."</p>
                <FormStatus error=last_error(login.value())/>
                <ActionForm action=login attr:class="space-y-4">
                    <div>
                        <label for="username" class="block text-sm font-medium text-slate-700">"Username"</label>
                        <input id="username" name="username" autocomplete="username" required class=INPUT/>
                    </div>
                    <div>
                        <label for="password" class="block text-sm font-medium text-slate-700">"Password"</label>
                        <input id="password" name="password" type="password" autocomplete="current-password" required class=INPUT/>
                    </div>
                    <button type="submit" class=format!("{BUTTON} w-full justify-center")>"Sign in"</button>
                </ActionForm>
            </div>
        </main>
    }
}
