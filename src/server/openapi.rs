//! The server's API as an OpenAPI 3.0 document (`docs/openapi.yaml`, `oxflow openapi`): the
//! endpoints and every status each can answer are written here, beside the router, and the
//! job spec's schema is derived from its serde types, so the document cannot drift from what
//! the server accepts (a test compares the file with this).

use crate::spec::JobSpec;
use serde_json::{json, Map, Value};

/// An error answer, by status.
fn errors(codes: &[(&str, &str)]) -> Map<String, Value> {
    codes
        .iter()
        .map(|(code, why)| {
            (
                code.to_string(),
                json!({
                    "description": why,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                }),
            )
        })
        .collect()
}

/// The statuses every endpoint behind the token can answer.
const GUARDED: &[(&str, &str)] = &[
    ("401", "No bearer token, or the wrong one."),
    (
        "403",
        "A Host header that is not a loopback name, on a loopback server.",
    ),
    (
        "503",
        "The request took longer than the server's request timeout.",
    ),
];

fn responses(ok: (&str, Value), more: &[(&str, &str)]) -> Value {
    let mut all = errors(GUARDED);
    all.extend(errors(more));
    all.insert(ok.0.to_string(), ok.1);
    Value::Object(all)
}

fn json_ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// The answer to a submission, linked to what can be done with the job it made.
fn created() -> Value {
    let mut answer = json_ok(
        "Created.",
        json!({"type": "object", "properties": {"id": {"type": "string"}}}),
    );
    let link = |operation: &str| json!({"operationId": operation, "parameters": {"id": "$response.body#/id"}});
    answer["links"] = json!({
        "status": link("getJob"),
        "savepoint": link("takeSavepoint"),
        "stop": link("stopJob"),
        "cancel": link("cancelJob"),
    });
    answer
}

/// The whole document.
pub fn openapi() -> Value {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let spec_schema = generator.subschema_for::<JobSpec>();
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}),
    );
    schemas.insert(
        "JobState".into(),
        json!({"type": "string", "enum": ["RUNNING", "RESTARTING", "FINISHED", "FAILED", "CANCELLED", "STOPPED"]}),
    );
    schemas.insert(
        "Subtask".into(),
        json!({"type": "object", "properties": {
            "index": {"type": "integer"},
            "records_in": {"type": "integer"},
            "records_out": {"type": "integer"},
            "backpressure_ms": {"type": "integer"},
            "watermark_ms": {"type": "integer", "nullable": true}
        }}),
    );
    schemas.insert(
        "Stage".into(),
        json!({"type": "object", "properties": {
            "index": {"type": "integer"},
            "name": {"type": "string"},
            "records_in": {"type": "integer"},
            "records_out": {"type": "integer"},
            "records_in_per_sec": {"type": "number"},
            "records_out_per_sec": {"type": "number"},
            "backpressure_ms": {"type": "integer"},
            "watermark_ms": {"type": "integer", "nullable": true, "description": "The least of the subtasks' watermarks; null until each has one."},
            "subtasks": {"type": "array", "items": {"$ref": "#/components/schemas/Subtask"}}
        }}),
    );
    schemas.insert(
        "Plan".into(),
        json!({"type": "object", "description": "The job's dataflow: stages of chained operators and the exchanges between them.", "properties": {
            "max_parallelism": {"type": "integer"},
            "stages": {"type": "array", "items": {"type": "object", "properties": {
                "index": {"type": "integer"},
                "name": {"type": "string"},
                "parallelism": {"type": "integer"},
                "source": {"type": "string", "nullable": true},
                "event_time": {"type": "string", "nullable": true},
                "operators": {"type": "array", "items": {"type": "string"}},
                "sink": {"type": "string", "nullable": true},
                "inputs": {"type": "array", "items": {"type": "object", "properties": {
                    "from": {"type": "integer"},
                    "exchange": {"type": "string", "description": "forward, rebalance or hash(KEYS)"}
                }}}
            }}}
        }}),
    );
    schemas.insert(
        "Checkpoint".into(),
        json!({"type": "object", "properties": {
            "id": {"type": "integer"},
            "status": {"type": "string", "enum": ["COMPLETED", "ABANDONED"]},
            "triggered_at_ms": {"type": "integer"},
            "duration_ms": {"type": "integer"},
            "alignment_ms": {"type": "integer"},
            "state_bytes": {"type": "integer"},
            "new_bytes": {"type": "integer"},
            "savepoint": {"type": "boolean"},
            "reason": {"type": "string", "nullable": true}
        }}),
    );
    schemas.insert(
        "JobStatus".into(),
        json!({"type": "object", "properties": {
            "id": {"type": "string"},
            "state": {"$ref": "#/components/schemas/JobState"},
            "submitted_at_ms": {"type": "integer"},
            "started_at_ms": {"type": "integer", "nullable": true},
            "finished_at_ms": {"type": "integer", "nullable": true},
            "sampled_at_ms": {"type": "integer", "description": "The server's clock when it answered."},
            "uptime_ms": {"type": "integer", "nullable": true, "description": "How long the current attempt has run."},
            "restarts": {"type": "integer"},
            "records_per_sec": {"type": "number", "description": "Records the sources read per second, over the current attempt."},
            "failure": {"type": "string", "nullable": true},
            "failures": {"type": "array", "description": "The last failed attempts, newest last.", "items": {"type": "object", "properties": {
                "at_ms": {"type": "integer"},
                "attempt": {"type": "integer"},
                "cause": {"type": "string"}
            }}},
            "restore_from": {"type": "string", "nullable": true},
            "savepoint": {"type": "string", "nullable": true},
            "plan": {"nullable": true, "allOf": [{"$ref": "#/components/schemas/Plan"}]},
            "operators": {"type": "array", "items": {"$ref": "#/components/schemas/Stage"}},
            "checkpoint_history": {"type": "array", "description": "The last 100 checkpoints of every attempt, oldest first.", "items": {"$ref": "#/components/schemas/Checkpoint"}},
            "tasks": {"type": "array", "description": "On a cluster, the worker of each subtask of the current (or last) attempt; empty when the job runs in the server.", "items": {"type": "object", "properties": {
                "stage": {"type": "integer"}, "subtask": {"type": "integer"}, "name": {"type": "string"},
                "worker": {"type": "string"}, "address": {"type": "string"}
            }}},
            "checkpoint": {"type": "object", "nullable": true, "properties": {
                "completed": {"type": "integer", "nullable": true},
                "last_id": {"type": "integer", "nullable": true},
                "last_duration_ms": {"type": "integer", "nullable": true},
                "state_bytes": {"type": "integer", "nullable": true}
            }},
            "spec": {"description": "The job's spec, secrets redacted.", "allOf": [spec_schema.clone()]}
        }}),
    );
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let on_a_job = [
        ("404", "No job of this id."),
        ("409", "The job is not running (or already ended)."),
        ("415", "A body that is not application/json."),
    ];
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Oxflow runtime server",
            "version": "1",
            "description": "Submit, watch, savepoint, stop and cancel stream processing jobs. Every error is JSON {\"error\": \"...\"}. Every path but /health, /v1/session and the dashboard's page (/ and /ui/) needs \"Authorization: Bearer <token>\" (or the dashboard's session cookie, which POST /v1/session sets): the token of `oxflow server --token-file`, or the one the server made in DATA_DIR/token. POST bodies are application/json. A server on a loopback address answers only to loopback Host names. See docs/server.md. Generated by `oxflow openapi`."
        },
        "servers": [{"url": "http://127.0.0.1:8081"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas
        },
        "paths": {
            "/health": {"get": {
                "security": [],
                "summary": "Liveness.",
                "responses": {
                    "200": json_ok("{\"status\": \"ok\"}", json!({"type": "object", "properties": {"status": {"type": "string"}}})),
                    "403": errors(&[("403", "A Host header that is not a loopback name.")])["403"]
                }
            }},
            "/v1/session": {
                "post": {
                    "security": [],
                    "summary": "Open a browser session: checks the token and sets it in an HttpOnly, SameSite=Strict cookie, which the other endpoints then take in place of the Authorization header.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["token"], "additionalProperties": false,
                        "properties": {"token": {"type": "string"}}
                    }}}},
                    "responses": responses(
                        ("200", json_ok("{\"session\": \"open\"}", json!({"type": "object", "properties": {"session": {"type": "string"}}}))),
                        &[("400", "A malformed body."), ("413", "A body larger than --max-body-bytes."), ("415", "A body that is not application/json.")]
                    )
                },
                "delete": {
                    "security": [],
                    "summary": "Close the browser session (clears the cookie).",
                    "responses": {
                        "200": json_ok("{\"session\": \"closed\"}", json!({"type": "object", "properties": {"session": {"type": "string"}}})),
                        "403": errors(&[("403", "A Host header that is not a loopback name.")])["403"],
                        "503": errors(&[("503", "The request took longer than the server's request timeout.")])["503"]
                    }
                }
            },
            "/metrics": {"get": {
                "summary": "Prometheus text format, per job, stage and subtask.",
                "responses": responses(("200", json!({"description": "Prometheus text format 0.0.4.", "content": {"text/plain": {"schema": {"type": "string"}}}})), &[])
            }},
            "/v1/jobs": {
                "post": {
                    "operationId": "submitJob",
                    "summary": "Submit a job.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object",
                        "description": "Exactly one of `spec` and `sql`.",
                        "additionalProperties": false,
                        "properties": {
                            "spec": spec_schema,
                            "sql": {"type": "string", "description": "Flink SQL statements (CREATE TABLE, CREATE VIEW, SET, one INSERT INTO), planned into a spec as `oxflow sql` plans them (docs/sql.md); each table's connector passes the same checks as a spec's."},
                            "restore_from": {"type": "string", "nullable": true, "description": "A savepoint or checkpoint directory, under the data directory or an --allow-path."}
                        }
                    }}}},
                    "responses": responses(
                        ("201", created()),
                        &[
                            ("400", "A malformed body or spec, a refused Kafka property, or a setting beyond a limit; the message says which."),
                            ("403", "A path outside the data directory and every --allow-path, or a Host that is not a loopback name."),
                            ("413", "A body larger than --max-body-bytes."),
                            ("415", "A body that is not application/json."),
                            ("429", "The server already runs --max-running-jobs jobs."),
                        ]
                    )
                },
                "get": {
                    "operationId": "listJobs",
                    "summary": "List jobs.",
                    "responses": responses(("200", json_ok("Every job.", json!({"type": "object", "properties": {"jobs": {"type": "array", "items": {"type": "object", "properties": {
                        "id": {"type": "string"},
                        "state": {"$ref": "#/components/schemas/JobState"},
                        "submitted_at_ms": {"type": "integer"},
                        "started_at_ms": {"type": "integer", "nullable": true},
                        "uptime_ms": {"type": "integer", "nullable": true},
                        "restarts": {"type": "integer"},
                        "records_per_sec": {"type": "number"}
                    }}}}}))), &[])
                }
            },
            "/v1/jobs/{id}": {
                "parameters": id.clone(),
                "get": {
                    "operationId": "getJob",
                    "summary": "A job's status.",
                    "responses": responses(("200", json_ok("The job.", json!({"$ref": "#/components/schemas/JobStatus"}))), &[("404", "No job of this id.")])
                },
                "delete": {
                    "operationId": "cancelJob",
                    "summary": "Cancel a job; answers once it has ended (within seconds).",
                    "responses": responses(("200", json_ok("{\"state\": \"CANCELLED\"}", json!({"type": "object", "properties": {"state": {"$ref": "#/components/schemas/JobState"}}}))), &on_a_job[..2])
                }
            },
            "/v1/jobs/{id}/savepoints": {
                "parameters": id.clone(),
                "post": {
                    "operationId": "takeSavepoint",
                    "summary": "Take a savepoint; answers when its checkpoint has completed.",
                    "responses": responses(("200", json_ok("{\"path\": \"...\"}", json!({"type": "object", "properties": {"path": {"type": "string"}}}))), &[on_a_job[0], on_a_job[1], on_a_job[2], ("504", "No savepoint within 120 s.")])
                }
            },
            "/v1/jobs/{id}/resume": {
                "parameters": id.clone(),
                "post": {
                    "operationId": "resumeJob",
                    "summary": "Submit an ended job again, as a new job, from the savepoint it was stopped with (or from restore_from).",
                    "requestBody": {"required": false, "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": false,
                        "properties": {"restore_from": {"type": "string", "nullable": true}}
                    }}}},
                    "responses": responses(
                        ("201", created()),
                        &[
                            ("400", "A malformed body, or a savepoint that does not load."),
                            ("403", "A path outside the data directory and every --allow-path."),
                            ("404", "No job of this id."),
                            ("409", "The job has not ended, or has no savepoint and none was given."),
                            ("413", "A body larger than --max-body-bytes."),
                            ("415", "A body that is not application/json."),
                            ("429", "The server already runs --max-running-jobs jobs."),
                        ]
                    )
                }
            },
            "/v1/workers": {
                "post": {
                    "operationId": "registerWorker",
                    "summary": "Register a worker (`oxflow worker` does this): its Flight address and slots. The answer's id names it in its polls and reports.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": false, "required": ["address", "slots"],
                        "properties": {
                            "address": {"type": "string", "description": "host:port other workers stream to"},
                            "slots": {"type": "integer", "minimum": 1, "maximum": 4096}
                        }
                    }}}},
                    "responses": responses(
                        ("201", json_ok("The worker's id and the server's worker timeout.", json!({"type": "object", "properties": {"id": {"type": "string"}, "timeout_ms": {"type": "integer"}}}))),
                        &[
                            ("400", "A malformed body, or slots outside 1 to 4096."),
                            ("413", "A body larger than --max-body-bytes."),
                            ("415", "A body that is not application/json."),
                            ("429", "The server already has 1024 workers."),
                        ]
                    )
                },
                "get": {
                    "operationId": "listWorkers",
                    "summary": "Every worker: id, address, slots, state (ALIVE or LOST), last heartbeat, attempts it runs.",
                    "responses": responses(("200", json_ok("{\"workers\": [...], \"timeout_ms\": 5000}", json!({"type": "object", "properties": {
                        "workers": {"type": "array", "items": {"type": "object", "properties": {
                            "id": {"type": "string"}, "address": {"type": "string"}, "slots": {"type": "integer"},
                            "state": {"type": "string", "enum": ["ALIVE", "LOST"]},
                            "registered_at_ms": {"type": "integer"}, "last_heartbeat_ms": {"type": "integer"},
                            "attempts": {"type": "integer"}
                        }}},
                        "timeout_ms": {"type": "integer"}
                    }}))), &[])
                }
            },
            "/v1/workers/{id}/poll": {
                "parameters": id.clone(),
                "post": {
                    "operationId": "pollWorker",
                    "summary": "A worker's heartbeat, with its tasks' counters; answered with its commands (deploy, trigger, complete, cancel) at once, or after 1 s with none.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": false,
                        "properties": {"metrics": {"type": "array", "items": {"type": "object"}}}
                    }}}},
                    "responses": responses(
                        ("200", json_ok("The commands.", json!({"type": "object", "properties": {"commands": {"type": "array", "items": {"type": "object"}}}}))),
                        &[
                            ("400", "A malformed body."),
                            ("404", "No worker of this id: register again."),
                            ("413", "A body larger than --max-body-bytes."),
                            ("415", "A body that is not application/json."),
                        ]
                    )
                }
            },
            "/v1/workers/{id}/reports": {
                "parameters": id.clone(),
                "post": {
                    "operationId": "workerReports",
                    "summary": "Reports of an attempt's tasks on a worker (checkpoint acknowledgements, ends, output pending commit), and the attempt's end there. Reports of an attempt the server does not run count for nothing.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": false, "required": ["job", "attempt"],
                        "properties": {
                            "job": {"type": "string"},
                            "attempt": {"type": "integer", "minimum": 0},
                            "reports": {"type": "array", "items": {"type": "object"}},
                            "ended": {"nullable": true}
                        }
                    }}}},
                    "responses": responses(
                        ("200", json_ok("Taken.", json!({"type": "object"}))),
                        &[
                            ("400", "A malformed body."),
                            ("413", "A body larger than --max-body-bytes."),
                            ("415", "A body that is not application/json."),
                        ]
                    )
                }
            },
            "/v1/jobs/{id}/stop": {
                "parameters": id,
                "post": {
                    "operationId": "stopJob",
                    "summary": "Stop a job with a savepoint.",
                    "responses": responses(("200", json_ok("{\"state\": \"STOPPED\", \"savepoint\": \"...\"}", json!({"type": "object", "properties": {"state": {"$ref": "#/components/schemas/JobState"}, "savepoint": {"type": "string"}}}))), &[on_a_job[0], on_a_job[1], on_a_job[2], ("504", "No savepoint within 120 s.")])
                }
            }
        }
    })
}

/// The document as `docs/openapi.yaml` holds it: JSON, which every YAML reader takes.
pub fn openapi_text() -> String {
    let mut text = serde_json::to_string_pretty(&openapi()).expect("a JSON value encodes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn docs_openapi_is_what_the_server_answers() {
        // include_str! makes the file part of the build, so an edit to it rebuilds this
        // test, and the check does not depend on where the tree was when it was compiled.
        let file = include_str!("../../docs/openapi.yaml");
        assert!(
            file == super::openapi_text(),
            "docs/openapi.yaml is out of date: run `oxflow openapi > docs/openapi.yaml`"
        );
    }
}
