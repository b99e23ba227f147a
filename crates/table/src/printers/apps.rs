//! Workload printers: deployments, replicasets, daemonsets, statefulsets (apps) and jobs,
//! cronjobs (batch).

use serde_json::Value;

use super::{
    col, container_cells, template_containers, wide, Printer, Row, AGE, CONTAINERS_DOC, IMAGES_DOC,
    NAME,
};
use crate::duration::human_duration;
use crate::json::{
    arr_at, get, int_at, map_at, opt_bool_at, opt_int_at, opt_str_at, present, str_at, time_at,
};
use crate::selector::{format_label_selector, format_labels, selector_string};

/// `spec.replicas`, defaulted to 1 as the API server's defaulting does.
fn desired_replicas(obj: &Value) -> i64 {
    opt_int_at(obj, &["spec", "replicas"]).unwrap_or(1)
}

fn name(obj: &Value) -> Value {
    Value::from(str_at(obj, &["metadata", "name"]))
}

pub(crate) const DEPLOYMENTS: Printer = Printer {
    columns: || {
        vec![
            NAME,
            col("Ready", "string", "Number of the pod with ready state"),
            col("Up-to-date", "string", "Total number of non-terminating pods targeted by this deployment that have the desired template spec."),
            col("Available", "string", "Total number of available non-terminating pods (ready for at least minReadySeconds) targeted by this deployment."),
            AGE,
            wide("Containers", "string", CONTAINERS_DOC),
            wide("Images", "string", IMAGES_DOC),
            wide("Selector", "string", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
        ]
    },
    row: |d, ctx| {
        let (names, images) = container_cells(template_containers(d));
        // printDeployment uses selector.String() directly: "" when empty, "<invalid>" on error.
        let selector = selector_string(get(d, &["spec", "selector"]))
            .unwrap_or_else(|()| "<invalid>".to_string());
        Row::new(vec![
            name(d),
            Value::from(format!(
                "{}/{}",
                int_at(d, &["status", "readyReplicas"]),
                desired_replicas(d)
            )),
            Value::from(int_at(d, &["status", "updatedReplicas"])),
            Value::from(int_at(d, &["status", "availableReplicas"])),
            ctx.age(d),
            names,
            images,
            Value::from(selector),
        ])
    },
};

pub(crate) const REPLICASETS: Printer = Printer {
    columns: || {
        vec![
            NAME,
            col("Desired", "integer", "Replicas is the number of desired pods. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicaset"),
            col("Current", "integer", "Replicas is the most recently observed number of non-terminating pods. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicaset"),
            col("Ready", "integer", "The number of non-terminating pods targeted by this ReplicaSet with a Ready Condition."),
            AGE,
            wide("Containers", "string", CONTAINERS_DOC),
            wide("Images", "string", IMAGES_DOC),
            wide("Selector", "string", "Selector is a label query over pods that should match the replica count. Label keys and values that must match in order to be controlled by this replica set. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors"),
        ]
    },
    row: |rs, ctx| {
        let (names, images) = container_cells(template_containers(rs));
        Row::new(vec![
            name(rs),
            Value::from(desired_replicas(rs)),
            Value::from(int_at(rs, &["status", "replicas"])),
            Value::from(int_at(rs, &["status", "readyReplicas"])),
            ctx.age(rs),
            names,
            images,
            Value::from(format_label_selector(get(rs, &["spec", "selector"]))),
        ])
    },
};

pub(crate) const DAEMONSETS: Printer = Printer {
    columns: || {
        vec![
            NAME,
            col("Desired", "integer", "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod). More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/"),
            col("Current", "integer", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod. More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/"),
            col("Ready", "integer", "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition."),
            col("Up-to-date", "integer", "The total number of nodes that are running updated daemon pod"),
            col("Available", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)"),
            col("Node Selector", "string", "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node. More info: https://kubernetes.io/docs/concepts/configuration/assign-pod-node/"),
            AGE,
            wide("Containers", "string", CONTAINERS_DOC),
            wide("Images", "string", IMAGES_DOC),
            wide("Selector", "string", "A label query over pods that are managed by the daemon set. Must match in order to be controlled. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors"),
        ]
    },
    row: |ds, ctx| {
        let (names, images) = container_cells(template_containers(ds));
        let status = |k: &str| Value::from(int_at(ds, &["status", k]));
        Row::new(vec![
            name(ds),
            status("desiredNumberScheduled"),
            status("currentNumberScheduled"),
            status("numberReady"),
            status("updatedNumberScheduled"),
            status("numberAvailable"),
            Value::from(format_labels(map_at(
                ds,
                &["spec", "template", "spec", "nodeSelector"],
            ))),
            ctx.age(ds),
            names,
            images,
            Value::from(format_label_selector(get(ds, &["spec", "selector"]))),
        ])
    },
};

pub(crate) const STATEFULSETS: Printer = Printer {
    columns: || {
        vec![
            NAME,
            col("Ready", "string", "Number of the pod with ready state"),
            AGE,
            wide("Containers", "string", CONTAINERS_DOC),
            wide("Images", "string", IMAGES_DOC),
        ]
    },
    row: |sts, ctx| {
        let (names, images) = container_cells(template_containers(sts));
        Row::new(vec![
            name(sts),
            Value::from(format!(
                "{}/{}",
                int_at(sts, &["status", "readyReplicas"]),
                desired_replicas(sts)
            )),
            ctx.age(sts),
            names,
            images,
        ])
    },
};

/// `hasJobCondition`: the first condition of that type decides.
fn job_condition(job: &Value, kind: &str) -> bool {
    arr_at(job, &["status", "conditions"])
        .iter()
        .find(|c| str_at(c, &["type"]) == kind)
        .is_some_and(|c| str_at(c, &["status"]) == "True")
}

pub(crate) const JOBS: Printer = Printer {
    columns: || {
        vec![
            NAME,
            col("Status", "string", "Status of the job."),
            col("Completions", "string", "The number of pods which reached phase Succeeded. The value increases monotonically for a given spec. However, it may decrease in reaction to scale down of elastic indexed jobs."),
            col("Duration", "string", "Time required to complete the job."),
            AGE,
            wide("Containers", "string", CONTAINERS_DOC),
            wide("Images", "string", IMAGES_DOC),
            wide("Selector", "string", "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors"),
        ]
    },
    row: |job, ctx| {
        let succeeded = int_at(job, &["status", "succeeded"]);
        let completions = match opt_int_at(job, &["spec", "completions"]) {
            Some(c) => format!("{succeeded}/{c}"),
            None => {
                let parallelism = opt_int_at(job, &["spec", "parallelism"]).unwrap_or(0);
                if parallelism > 1 {
                    format!("{succeeded}/1 of {parallelism}")
                } else {
                    format!("{succeeded}/1")
                }
            }
        };
        let duration = match (
            time_at(job, &["status", "startTime"]),
            time_at(job, &["status", "completionTime"]),
        ) {
            (None, _) => String::new(),
            (Some(start), None) => human_duration(ctx.now - start),
            (Some(start), Some(done)) => human_duration(done - start),
        };
        let status = if job_condition(job, "Complete") {
            "Complete"
        } else if job_condition(job, "Failed") {
            "Failed"
        } else if present(job, &["metadata", "deletionTimestamp"]) {
            "Terminating"
        } else if job_condition(job, "Suspended") {
            "Suspended"
        } else if job_condition(job, "FailureTarget") {
            "FailureTarget"
        } else {
            "Running"
        };
        let (names, images) = container_cells(template_containers(job));
        Row::new(vec![
            name(job),
            Value::from(status),
            Value::from(completions),
            Value::from(duration),
            ctx.age(job),
            names,
            images,
            Value::from(format_label_selector(get(job, &["spec", "selector"]))),
        ])
    },
};

pub(crate) const CRONJOBS: Printer = Printer {
    columns: || {
        vec![
            NAME,
            col("Schedule", "string", "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
            col("Timezone", "string", "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones. If not specified, this will default to the time zone of the kube-controller-manager process. The set of valid time zone names and the time zone offset is loaded from the system-wide time zone database by the API server during CronJob validation and the controller manager during execution. If no system-wide time zone database can be found a bundled version of the database is used instead. If the time zone name becomes invalid during the lifetime of a CronJob or due to a change in host configuration, the controller will stop creating new new Jobs and will create a system event with the reason UnknownTimeZone. More information can be found in https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/#time-zones"),
            col("Suspend", "boolean", "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions. Defaults to false."),
            col("Active", "integer", "A list of pointers to currently running jobs."),
            col("Last Schedule", "string", "Information when was the last time the job was successfully scheduled."),
            AGE,
            wide("Containers", "string", CONTAINERS_DOC),
            wide("Images", "string", IMAGES_DOC),
            wide("Selector", "string", "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors"),
        ]
    },
    row: |cj, ctx| {
        let last_schedule = match time_at(cj, &["status", "lastScheduleTime"]) {
            Some(t) => ctx.since(Some(t)),
            None => "<none>".to_string(),
        };
        // printBoolPtr
        let suspend = match opt_bool_at(cj, &["spec", "suspend"]) {
            Some(true) => "True",
            Some(false) => "False",
            None => "<unset>",
        };
        let pod_spec = &[
            "spec",
            "jobTemplate",
            "spec",
            "template",
            "spec",
            "containers",
        ];
        let (names, images) = container_cells(arr_at(cj, pod_spec));
        Row::new(vec![
            name(cj),
            Value::from(str_at(cj, &["spec", "schedule"])),
            Value::from(opt_str_at(cj, &["spec", "timeZone"]).unwrap_or("<none>")),
            Value::from(suspend),
            Value::from(arr_at(cj, &["status", "active"]).len() as i64),
            Value::from(last_schedule),
            ctx.age(cj),
            names,
            images,
            Value::from(format_label_selector(get(
                cj,
                &["spec", "jobTemplate", "spec", "selector"],
            ))),
        ])
    },
};
