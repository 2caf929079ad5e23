//! The landing page: what the caller's teams have declared, and what changed last.

use crate::components::*;
use crate::error::AppError;
use keystone_control::{Kind, Revision};
use leptos::prelude::*;
use leptos_meta::Title;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverviewData {
    pub counts: Vec<(Kind, usize)>,
    pub recent: Vec<Revision>,
}

#[server]
pub async fn overview() -> Result<OverviewData, AppError> {
    use keystone_control::goal::Goal;
    use keystone_control::store::AuditFilter;
    let (store, who) = crate::state::caller().await?;
    let goal = Goal::new(&store, &who);
    let mut counts = Vec::new();
    for kind in [Kind::Stream, Kind::Sink, Kind::Route] {
        counts.push((kind, goal.list(kind).await?.len()));
    }
    let recent = goal.audit(&AuditFilter { limit: 10, ..Default::default() }).await?;
    Ok(OverviewData { counts, recent })
}

#[component]
pub fn OverviewPage() -> impl IntoView {
    let data = Resource::new(|| (), |_| overview());
    view! {
        <Title text="Overview · Keystone"/>
        <PageHeader title="Overview" subtitle="Your teams' declared goal state.">
            <span></span>
        </PageHeader>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <LoadError error=e/> }.into_any(),
                    Ok(o) => view! {
                        <div class="grid gap-4 sm:grid-cols-3">
                            {o.counts
                                .into_iter()
                                .map(|(kind, n)| {
                                    view! {
                                        <a href=format!("/{}", kind.plural()) class=format!("{CARD} block p-5 hover:border-indigo-300")>
                                            <p class="text-sm text-slate-500 capitalize">{kind.plural()}</p>
                                            <p class="mt-1 text-3xl font-semibold" data-testid=format!("count-{}", kind.plural())>{n}</p>
                                        </a>
                                    }
                                })
                                .collect_view()}
                        </div>
                        <h2 class="mt-8 mb-3 text-lg font-medium">"Recent changes"</h2>
                        <super::audit::RevisionTable revisions=o.recent/>
                    }
                        .into_any(),
                }
            })}
        </Suspense>
    }
}
