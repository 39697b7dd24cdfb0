// What a Node service does with SQS, through the AWS SDK for JavaScript v3, against any SQS endpoint.
//
// Run by tests/test_sqs_node.py against dbqueue's HTTP listener:
//
//   SQS_ENDPOINT=http://127.0.0.1:PORT AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... AWS_REGION=us-east-1 \
//     node sqs_check.mjs PREFIX
//
// The client is configured as a service would configure it (endpoint, region, credentials from the
// environment), so it signs every request with SigV4 and checks the MD5 of every body the server returns
// (the SDK's own middleware-sdk-sqs). The script creates PREFIX-jobs and PREFIX-later and leaves PREFIX-jobs in a
// known state for the test to check through dbqueue's own client: one message ready (with attributes),
// one in flight for 600 s, ten deleted. It prints one JSON object with what each step saw and exits 0;
// on any failure it prints the error and exits 1.

import { readFileSync } from "node:fs";

import {
  ChangeMessageVisibilityCommand,
  CreateQueueCommand,
  DeleteMessageBatchCommand,
  DeleteMessageCommand,
  DeleteQueueCommand,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  ListQueuesCommand,
  ReceiveMessageCommand,
  SendMessageBatchCommand,
  SendMessageCommand,
  SQSClient,
} from "@aws-sdk/client-sqs";

const prefix = process.argv[2] ?? "node";
const sqs = new SQSClient({
  endpoint: process.env.SQS_ENDPOINT,
  region: process.env.AWS_REGION ?? "us-east-1",
  maxAttempts: 1, // a retried request would hide a refusal the test wants to see
});
const out = {};

const ATTRIBUTES = {
  colour: { DataType: "String", StringValue: "blue" },
  count: { DataType: "Number", StringValue: "42" },
  blob: { DataType: "Binary", BinaryValue: Uint8Array.from([0, 1, 255]) },
};

// Attributes as JSON can carry them: binary values in base64.
function plainAttributes(attributes) {
  const plain = {};
  for (const [name, value] of Object.entries(attributes ?? {})) {
    plain[name] = value.BinaryValue
      ? { DataType: value.DataType, BinaryValue: Buffer.from(value.BinaryValue).toString("base64") }
      : { DataType: value.DataType, StringValue: value.StringValue };
  }
  return plain;
}

async function receiveAll(url, count) {
  // Receives until `count` messages are in hand; each call long-polls a second so none is a busy loop.
  const messages = [];
  for (let calls = 0; messages.length < count && calls < 20; calls++) {
    const { Messages = [] } = await sqs.send(
      new ReceiveMessageCommand({
        QueueUrl: url,
        MaxNumberOfMessages: 10,
        WaitTimeSeconds: 1,
        MessageAttributeNames: ["All"],
        MessageSystemAttributeNames: ["All"],
      }),
    );
    messages.push(...Messages);
  }
  return messages;
}

async function main() {
  // Queues: create (twice: the second returns the same URL), find, list.
  const created = await sqs.send(
    new CreateQueueCommand({ QueueName: `${prefix}-jobs`, Attributes: { VisibilityTimeout: "30" } }),
  );
  const url = created.QueueUrl;
  const again = await sqs.send(
    new CreateQueueCommand({ QueueName: `${prefix}-jobs`, Attributes: { VisibilityTimeout: "30" } }),
  );
  const found = await sqs.send(new GetQueueUrlCommand({ QueueName: `${prefix}-jobs` }));
  const later = (await sqs.send(new CreateQueueCommand({ QueueName: `${prefix}-later` }))).QueueUrl;
  const listed = await sqs.send(new ListQueuesCommand({ QueueNamePrefix: prefix }));
  out.queues = { url, again: again.QueueUrl, found: found.QueueUrl, later, listed: listed.QueueUrls ?? [] };

  // One message with attributes, then a batch of ten.
  const sent = await sqs.send(
    new SendMessageCommand({ QueueUrl: url, MessageBody: "resize image 42", MessageAttributes: ATTRIBUTES }),
  );
  out.send = {
    id: sent.MessageId,
    md5OfBody: sent.MD5OfMessageBody,
    md5OfAttributes: sent.MD5OfMessageAttributes,
  };
  const batch = await sqs.send(
    new SendMessageBatchCommand({
      QueueUrl: url,
      Entries: Array.from({ length: 10 }, (_, i) => ({
        Id: `m${i}`,
        MessageBody: `batch ${i}`,
        MessageAttributes: { index: { DataType: "Number", StringValue: String(i) } },
      })),
    }),
  );
  out.sendBatch = {
    successful: (batch.Successful ?? []).map((entry) => entry.Id).sort(),
    failed: batch.Failed ?? [],
    ids: Object.fromEntries((batch.Successful ?? []).map((entry) => [entry.Id, entry.MessageId])),
  };

  // A long poll on an empty queue, answered when a delayed message becomes visible.
  await sqs.send(new SendMessageCommand({ QueueUrl: later, MessageBody: "one second late", DelaySeconds: 1 }));
  const polling = Date.now();
  const polled = await sqs.send(new ReceiveMessageCommand({ QueueUrl: later, WaitTimeSeconds: 10 }));
  out.longPoll = { ms: Date.now() - polling, bodies: (polled.Messages ?? []).map((message) => message.Body) };
  for (const message of polled.Messages ?? []) {
    await sqs.send(new DeleteMessageCommand({ QueueUrl: later, ReceiptHandle: message.ReceiptHandle }));
  }

  // Receive all eleven, with their attributes.
  const received = await receiveAll(url, 11);
  out.receive = received.map((message) => ({
    id: message.MessageId,
    body: message.Body,
    md5OfBody: message.MD5OfBody,
    attributes: plainAttributes(message.MessageAttributes),
    receiveCount: message.Attributes?.ApproximateReceiveCount,
    senderId: message.Attributes?.SenderId,
    sentTimestamp: message.Attributes?.SentTimestamp,
  }));
  const byBody = Object.fromEntries(received.map((message) => [message.Body, message]));

  // Visibility: the first message made visible at once and received again; "batch 9" kept for 600 s.
  const first = byBody["resize image 42"];
  await sqs.send(
    new ChangeMessageVisibilityCommand({ QueueUrl: url, ReceiptHandle: first.ReceiptHandle, VisibilityTimeout: 0 }),
  );
  const [redelivered] = await receiveAll(url, 1);
  out.redelivered = {
    body: redelivered?.Body,
    receiveCount: redelivered?.Attributes?.ApproximateReceiveCount,
    attributes: plainAttributes(redelivered?.MessageAttributes),
  };
  await sqs.send(
    new ChangeMessageVisibilityCommand({
      QueueUrl: url,
      ReceiptHandle: byBody["batch 9"].ReceiptHandle,
      VisibilityTimeout: 600,
    }),
  );

  // Deletes: the redelivered one alone, "batch 0" .. "batch 8" as a batch.
  await sqs.send(new DeleteMessageCommand({ QueueUrl: url, ReceiptHandle: redelivered.ReceiptHandle }));
  const deleted = await sqs.send(
    new DeleteMessageBatchCommand({
      QueueUrl: url,
      Entries: Array.from({ length: 9 }, (_, i) => ({ Id: `d${i}`, ReceiptHandle: byBody[`batch ${i}`].ReceiptHandle })),
    }),
  );
  out.deleteBatch = {
    successful: (deleted.Successful ?? []).map((entry) => entry.Id).sort(),
    failed: deleted.Failed ?? [],
  };

  // One message left for dbqueue's own client to read, then the queue's counts.
  const left = await sqs.send(
    new SendMessageCommand({
      QueueUrl: url,
      MessageBody: "for the native client",
      MessageAttributes: { colour: ATTRIBUTES.colour },
    }),
  );
  out.left = { id: left.MessageId };
  const counts = await sqs.send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ["All"] }));
  out.attributes = counts.Attributes;

  // A refusal comes back as the SDK's modelled exception.
  try {
    await sqs.send(new GetQueueUrlCommand({ QueueName: `${prefix}-missing` }));
    out.missing = { name: "no error" };
  } catch (error) {
    out.missing = { name: error.name, status: error.$metadata?.httpStatusCode };
  }

  await sqs.send(new DeleteQueueCommand({ QueueUrl: later }));
  const manifest = new URL("./node_modules/@aws-sdk/client-sqs/package.json", import.meta.url);
  out.sdk = JSON.parse(readFileSync(manifest, "utf8")).version;
  console.log(JSON.stringify(out));
}

main().catch((error) => {
  console.error(error);
  console.log(JSON.stringify({ ...out, error: String(error), errorName: error?.name }));
  process.exit(1);
});
