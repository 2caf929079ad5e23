//! The processes that run route jobs: each `keystone worker` (and a server in role `all` while it
//! runs the jobs), which partitions of which job it holds, and whether it is still heartbeating.

use crate::components::*;
use crate::error::AppError;
use keystone_control::workers::WorkerStatus;
use leptos::prelude::*;
use leptos_meta::Title;

/// The registered processes the caller may see: an admin every process by name; anyone else the
/// processes running their teams' jobs, with only those jobs and no host or folder names.
#[server]
pub async fn list_workers() -> Result<Vec<WorkerStatus>, AppError> {
    let (store, who) = crate::state::caller().await?;
    Ok(store.workers_for(&who).await?)
}

#[component]
pub fn WorkersPage() -> impl IntoView {
    let data = Resource::new(|| (), |_| list_workers());
    view! {
        <Title text="Workers · Keystone"/>
        <PageHeader title="Workers" subtitle="Processes running route jobs, and the partitions each holds. A route's job is shared by the workers through its Kafka consumer group; a worker that stops heartbeating loses its partitions to the others.">
            <span></span>
        </PageHeader>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <LoadError error=e/> }.into_any(),
                    Ok(workers) if workers.is_empty() => view! {
                        <p class="text-sm text-slate-500">"No process runs route jobs yet."</p>
                    }.into_any(),
                    Ok(workers) => view! {
                        <div class=format!("{CARD} overflow-hidden")>
                            <table class="min-w-full divide-y divide-slate-200" data-testid="workers-table">
                                <thead class="bg-slate-50"><tr>
                                    <th class=TH>"Process"</th><th class=TH>"Health"</th><th class=TH>"Last heartbeat"</th>
                                    <th class=TH>"Jobs and partitions"</th>
                                </tr></thead>
                                <tbody class="divide-y divide-slate-100">
                                    {workers.into_iter().map(|w| view! {
                                        <tr>
                                            <td class=TD>
                                                <p class="font-medium">{w.name.clone()}</p>
                                                <p class="text-xs text-slate-500">{format!("{} · since {}", w.role, format_time(w.started_at))}</p>
                                            </td>
                                            <td class=TD>{if w.alive {
                                                view! { <span class=BADGE_CREATE>"heartbeating"</span> }.into_any()
                                            } else {
                                                view! { <span class=BADGE_DELETE>"silent"</span> }.into_any()
                                            }}</td>
                                            <td class=format!("{TD} text-slate-500 whitespace-nowrap")>{format_time(w.heartbeat_at)}</td>
                                            <td class=TD>
                                                {if w.jobs.is_empty() { "none".to_owned() } else { String::new() }}
                                                <ul class="space-y-0.5">
                                                    {w.jobs.into_iter().map(|j| view! {
                                                        <li>
                                                            <span class="font-medium">{j.route.clone()}</span>
                                                            <span class="text-slate-500">{format!(" · partitions {}", partition_list(&j.partitions))}</span>
                                                        </li>
                                                    }).collect_view()}
                                                </ul>
                                            </td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                        </div>
                    }.into_any(),
                }
            })}
        </Suspense>
    }
}

/// "0-3, 7, 9-11": runs of consecutive partitions.
fn partition_list(partitions: &[u32]) -> String {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &p in partitions {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == p => *end = p,
            _ => runs.push((p, p)),
        }
    }
    let shown: Vec<String> =
        runs.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
    if shown.is_empty() {
        "none".into()
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn partitions_show_as_runs() {
        assert_eq!(super::partition_list(&[0, 1, 2, 3, 7, 9, 10, 11]), "0-3, 7, 9-11");
        assert_eq!(super::partition_list(&[]), "none");
    }
}
