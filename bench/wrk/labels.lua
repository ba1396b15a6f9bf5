-- The labels of the batch rows: 100 remembered (retrieved once before the
-- rounds), and a mix of 100 for the status rows: 34 of those remembered, 33
-- invalid (30 February), 33 valid but never asked for.
local labels = {}

function labels.remembered()
  local list = {}
  for i = 1, 100 do
    list[i] = string.format("2024-05-02T21:03:35.001_R%07d", i)
  end
  return list
end

function labels.mixed()
  local list = {}
  for i = 1, 100 do
    if i % 3 == 1 then
      list[i] = string.format("2024-05-02T21:03:35.001_R%07d", i)
    elseif i % 3 == 2 then
      list[i] = string.format("2024-02-30T21:03:35.001_I%07d", i)
    else
      list[i] = string.format("2024-05-02T21:03:35.001_U%07d", i)
    end
  end
  return list
end

function labels.batch_body(list)
  local quoted = {}
  for i, label in ipairs(list) do
    quoted[i] = '"' .. label .. '"'
  end
  return '{"labels": [' .. table.concat(quoted, ", ") .. "]}"
end

return labels
