//! The functions' broker settings as `template.yaml` gives them, for one broker and for
//! several: the Globals environment is evaluated the way CloudFormation would (`!If` on
//! the template's own conditions, `!Ref`, `!Join`, `!Select`, `AWS::NoValue` dropping a
//! variable) for given parameters, and the result must be a configuration the crate
//! accepts, with the brokers and the secrets paired in the same order.

use std::collections::BTreeMap;

use longpoll::config::Config;
use serde_norway::Value;

const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");

/// What `!GetAtt` gives for the resources the environment names (a created broker's
/// endpoint, the functions' broker user's secret).
fn attribute(name: &str) -> Value {
    match name {
        "Broker.AmqpEndpoints" => Value::Sequence(vec![Value::from(
            "amqps://b-created.mq.eu-west-1.amazonaws.com:5671",
        )]),
        "FunctionBrokerUser.SecretArn" => {
            Value::from("arn:aws:secretsmanager:eu-west-1:1:secret:fn")
        }
        other => panic!("no stand-in for !GetAtt {other}"),
    }
}

/// A template evaluated for one set of parameters.
struct Stack {
    template: Value,
    parameters: BTreeMap<&'static str, Value>,
}

impl Stack {
    fn new(parameters: &[(&'static str, &str)]) -> Self {
        let text = std::fs::read_to_string(TEMPLATE).unwrap();
        let template: Value = serde_norway::from_str(&text).unwrap();
        let mut values = BTreeMap::new();
        for (name, declared) in template["Parameters"].as_mapping().unwrap() {
            let name: &'static str = name.as_str().unwrap().to_owned().leak();
            let given = parameters
                .iter()
                .find(|(given, _)| *given == name)
                .map(|(_, value)| *value);
            let text = given
                .or_else(|| declared["Default"].as_str())
                .unwrap_or_default();
            let kind = declared["Type"].as_str().unwrap();
            let value = if kind == "CommaDelimitedList" || kind.starts_with("List<") {
                Value::Sequence(text.split(',').map(Value::from).collect())
            } else {
                Value::from(text)
            };
            values.insert(name, value);
        }
        Self {
            template,
            parameters: values,
        }
    }

    fn condition(&self, name: &str) -> bool {
        let value = self.evaluate(&self.template["Conditions"][name]);
        value
            .as_bool()
            .unwrap_or_else(|| panic!("{name}: {value:?}"))
    }

    fn truth(&self, value: &Value) -> bool {
        self.evaluate(value).as_bool().unwrap()
    }

    /// `value` with its intrinsic functions applied (`Null` for `AWS::NoValue`); a plain
    /// value, a literal list included, as it is.
    fn evaluate(&self, value: &Value) -> Value {
        let Value::Tagged(tagged) = value else {
            return value.clone();
        };
        let arguments = &tagged.value;
        let items = || arguments.as_sequence().unwrap();
        match tagged.tag.to_string().as_str() {
            "!Ref" => match arguments.as_str().unwrap() {
                "AWS::NoValue" => Value::Null,
                name => self.parameters[name].clone(),
            },
            "!GetAtt" => attribute(arguments.as_str().unwrap()),
            "!Condition" => Value::Bool(self.condition(arguments.as_str().unwrap())),
            "!If" => {
                let branch = if self.condition(items()[0].as_str().unwrap()) {
                    1
                } else {
                    2
                };
                self.evaluate(&items()[branch])
            }
            "!Not" => Value::Bool(!self.truth(&items()[0])),
            "!And" => Value::Bool(items().iter().all(|item| self.truth(item))),
            "!Or" => Value::Bool(items().iter().any(|item| self.truth(item))),
            "!Equals" => Value::Bool(self.evaluate(&items()[0]) == self.evaluate(&items()[1])),
            "!Select" => {
                let index: usize = self.evaluate(&items()[0]).as_str().map_or_else(
                    || items()[0].as_u64().unwrap() as usize,
                    |text| text.parse().unwrap(),
                );
                self.evaluate(&items()[1]).as_sequence().unwrap()[index].clone()
            }
            "!Split" => {
                let separator = items()[0].as_str().unwrap().to_owned();
                let text = self.evaluate(&items()[1]);
                Value::Sequence(
                    text.as_str()
                        .unwrap()
                        .split(separator.as_str())
                        .map(Value::from)
                        .collect(),
                )
            }
            "!Join" => {
                let separator = items()[0].as_str().unwrap();
                let list = match self.evaluate(&items()[1]) {
                    Value::Sequence(list) => list,
                    _ => panic!("!Join of a non-list"),
                };
                let parts: Vec<String> = list
                    .iter()
                    .map(|part| self.evaluate(part).as_str().unwrap().to_owned())
                    .collect();
                Value::from(parts.join(separator))
            }
            other => panic!("no evaluation for {other}"),
        }
    }

    /// The functions' broker settings (`AMQP_*`) among the Globals variables, evaluated;
    /// a variable that comes to `AWS::NoValue` is left out, as CloudFormation leaves it.
    fn environment(&self) -> BTreeMap<String, String> {
        let variables = &self.template["Globals"]["Function"]["Environment"]["Variables"];
        let mut environment = BTreeMap::new();
        for (name, value) in variables.as_mapping().unwrap() {
            let name = name.as_str().unwrap();
            if !name.starts_with("AMQP_") {
                continue;
            }
            if let Some(text) = self.evaluate(value).as_str() {
                environment.insert(name.to_owned(), text.to_owned());
            }
        }
        environment
    }
}

fn configured(environment: &BTreeMap<String, String>) -> Config {
    let mut lookup = environment.clone();
    // Stand-in credentials, as the secrets would fill in (longpoll::secrets).
    lookup.insert(
        "JWT_SECRET".to_owned(),
        "a-secret-of-thirty-two-bytes-xyz".to_owned(),
    );
    Config::from_lookup("template", |name| lookup.get(name).cloned())
        .unwrap_or_else(|error| panic!("{error}: {environment:?}"))
}

#[test]
fn one_broker_gets_amqp_url_and_its_secret() {
    for create in ["true", "false"] {
        let stack = Stack::new(&[
            ("CreateBroker", create),
            (
                "ExistingBrokerEndpoint",
                "amqps://b-existing.mq.eu-west-1.amazonaws.com:5671",
            ),
            ("ExistingBrokerSecretName", "longpoll/existing"),
        ]);
        assert!(!stack.condition("SeveralBrokers"));
        let environment = stack.environment();
        assert_eq!(
            environment.keys().collect::<Vec<_>>(),
            ["AMQP_SECRET_ARN", "AMQP_URL"],
            "{environment:?}"
        );
        let config = configured(&environment);
        assert!(!config.sharded());
        assert_eq!(config.amqp_urls.len(), 1);
    }
}

#[test]
fn further_brokers_become_shards_with_a_secret_each_in_order() {
    let further = "amqps://b-two.mq.eu-west-1.amazonaws.com:5671,amqps://b-three.mq.eu-west-1.amazonaws.com:5671";
    let secrets = "arn:aws:secretsmanager:eu-west-1:1:secret:two,arn:aws:secretsmanager:eu-west-1:1:secret:three";
    for (create, first_url, first_secret) in [
        (
            "true",
            "amqps://b-created.mq.eu-west-1.amazonaws.com:5671",
            "arn:aws:secretsmanager:eu-west-1:1:secret:fn",
        ),
        (
            "false",
            "amqps://b-existing.mq.eu-west-1.amazonaws.com:5671",
            "longpoll/existing",
        ),
    ] {
        let stack = Stack::new(&[
            ("CreateBroker", create),
            (
                "ExistingBrokerEndpoint",
                "amqps://b-existing.mq.eu-west-1.amazonaws.com:5671",
            ),
            ("ExistingBrokerSecretName", "longpoll/existing"),
            ("FurtherBrokerEndpoints", further),
            ("FurtherBrokerSecretArns", secrets),
            ("BrokerSlots", "0-999:0,1000-9999:1,10000-16383:2"),
        ]);
        assert!(stack.condition("SeveralBrokers"));
        let environment = stack.environment();
        assert_eq!(
            environment.keys().collect::<Vec<_>>(),
            ["AMQP_SECRET_ARNS", "AMQP_SLOTS", "AMQP_URLS"],
            "{environment:?}"
        );
        assert_eq!(environment["AMQP_URLS"], format!("{first_url},{further}"));
        assert_eq!(
            environment["AMQP_SECRET_ARNS"],
            format!("{first_secret},{secrets}")
        );
        let config = configured(&environment);
        assert!(config.sharded());
        assert_eq!(config.amqp_urls.len(), 3);
        assert_eq!(config.amqp_urls[0], first_url);
        assert_eq!(config.slots.broker_of_slot(1000), 1);
    }
}
