// A SMART app's reads with fhir-kit-client, given its access token (JSON on stdin:
// {fhir, token, patient, other, out}). Reads the patient, pages through their clinical records,
// tries another patient's record, appends every resource to `out` (NDJSON) and prints a summary.
import { appendFileSync } from 'node:fs';
import Client from 'fhir-kit-client';

const input = JSON.parse(await new Promise((resolve) => {
  let text = '';
  process.stdin.on('data', (chunk) => { text += chunk; });
  process.stdin.on('end', () => resolve(text));
}));
const client = new Client({ baseUrl: input.fhir });
client.bearerToken = input.token;
const me = `Patient/${input.patient}`;
const keep = (resource) => appendFileSync(input.out, JSON.stringify(resource) + '\n');

const patient = await client.read({ resourceType: 'Patient', id: input.patient });
keep(patient);
const summary = { patient: `Patient/${patient.id}`, counts: {}, outside: [], pages: 0 };

for (const resourceType of ['Observation', 'Condition', 'Encounter', 'Immunization', 'Procedure']) {
  summary.counts[resourceType] = 0;
  let bundle = await client.search({ resourceType, searchParams: { patient: input.patient, _count: 10 } });
  while (bundle) {
    summary.pages += 1;
    keep(bundle);
    for (const entry of bundle.entry ?? []) {
      summary.counts[resourceType] += 1;
      const subject = entry.resource.subject?.reference ?? entry.resource.patient?.reference;
      if (subject !== me) summary.outside.push(`${resourceType}/${entry.resource.id}`);
    }
    bundle = await client.nextPage({ bundle });
  }
}

try {
  await client.read({ resourceType: 'Patient', id: input.other });
  summary.otherPatientStatus = 200;
} catch (error) {
  summary.otherPatientStatus = error.response?.status ?? String(error);
}
process.stdout.write(JSON.stringify(summary) + '\n');
